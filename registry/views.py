"""Browser views for the registry (Django templates + htmx partials)."""

from __future__ import annotations

import html

from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import filesizeformat, truncatechars
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST, require_safe

from controlplane import access
from controlplane.audit import Actor
from controlplane.errors import InvalidInput, ServiceError
from controlplane.models import Role
from controlplane.pagination import Counted
from controlplane.web import HTMX_STOP_POLLING, paginate, polled, refuse, registry_page, takes_uploads
from registry import services
from registry.api import highest_version, uploader_name
from registry.downloads import artifact_response
from registry.models import VERSION_TERMINAL, ArtifactFormat, Model, ModelVersion, VersionStatus
from registry.uploads import raise_if_form_refused


@registry_page
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
    # A NUL cannot be in a name or a description (PostgreSQL's text refuses it; looking for one was a 500).
    query = request.GET.get("q", "").replace("\x00", "\ufffd").strip()
    models = Model.objects.annotate(highest_version=highest_version()).order_by("name")
    if query:
        models = models.filter(Q(name__icontains=query) | Q(description__icontains=query))
    return {
        "page": paginate(request, models, 25),
        "q": query,
        "form": request.POST,
        "may_create": access.can_registry(Actor.from_request(request), Role.DEPLOYER),
    }


def _versions_context(request, model: Model) -> dict:
    versions = model.versions.annotate(uploaded_by_username=uploader_name()).order_by("-version")
    page = paginate(request, Counted(versions.values_list(*VERSION_ROW_COLUMNS), model.version_count))
    # Reversed once with a placeholder; each row appends its number.
    versions_url = reverse("registry:version-detail", args=[model.name, 0]).removesuffix("0/")
    in_flight = any(row[1] not in VERSION_TERMINAL for row in page)
    return {"model": model, "page": page, "in_flight": in_flight, "rows": version_rows_html(page, versions_url)}


# What version_rows_html reads, in this order.
VERSION_ROW_COLUMNS = (
    "version",
    "status",
    "rejection_reason",
    "format",
    "size",
    "sha256",
    "created_at",
    "uploaded_by_username",
)
_FORMAT_LABELS = dict(ArtifactFormat.choices)
_STATUS_LABELS = dict(VersionStatus.choices)


def _escape(value) -> str:
    """django.utils.html.escape, the same text, without its wrapper for lazy strings: a table's
    rows escape ~500 values, and the wrapper cost three times the escaping."""
    return html.escape(str(value))


def version_rows_html(rows, versions_url: str) -> SafeString:
    """The versions table's rows, as its template would write them, in plain Python.

    50 rows through the template engine (an include, filters, a lookup per variable)
    took half of the page's time; tests/registry/test_version_list.py holds this equal
    to the template it replaced, byte for byte.
    """
    zone = timezone.get_current_timezone()
    versions_url = _escape(versions_url)
    out = []
    for version, status, reason, format_, size, sha256, created_at, uploaded_by in rows:
        created = created_at.astimezone(zone)
        note = f'<small class="reason error">{_escape(truncatechars(reason, 180))}</small>' if reason else ""
        out.append(
            f'\n    <tr>\n      <td><a href="{versions_url}{version}/"><strong>v{version}</strong></a></td>'
            f'\n      <td class="status">{status_badge_html(status, reason)}\n\n        {note}</td>'
            f'\n      <td class="nowrap">{_escape(_FORMAT_LABELS.get(format_, format_))}</td>'
            f'\n      <td class="num nowrap">{_escape(filesizeformat(size))}</td>'
            f'\n      <td><code title="{_escape(sha256)}">{_escape(sha256[:12])}…</code></td>'
            f'\n      <td><span class="nowrap" title="{_escape(created.isoformat())}">'
            f"{_escape(created.strftime('%Y-%m-%d %H:%M'))}</span>"
            f' <span class="muted nowrap">by {_escape(uploaded_by)}</span></td>'
            "\n    </tr>\n  "
        )
    return mark_safe("".join(out))  # noqa: S308 (every value above is escaped)


def status_badge_html(status: str, reason: str) -> str:
    """templates/registry/htmx/status_badge.html for one row (tested equal)."""
    title = f' title="{_escape(reason)}"' if reason else ""
    if status == VersionStatus.VALIDATING:
        mark = '<span class="spinner" aria-hidden="true"></span>'
    elif status not in VERSION_TERMINAL:
        mark = '<span class="dot" aria-hidden="true"></span>'
    else:
        mark = ""
    label = _escape(_STATUS_LABELS.get(status, status))
    return f'<span class="badge badge-{_escape(status)}" data-status="{_escape(status)}"{title}>{mark}{label}</span>'


@registry_page
@require_GET
def model_detail(request, name):
    model = get_object_or_404(Model, name=name)
    context = _versions_context(request, model)
    context["may_upload"] = access.can_registry(Actor.from_request(request), Role.DEPLOYER)
    return render(request, "registry/model_detail.html", context)


@polled
@registry_page
@require_GET
def version_rows(request, name):
    model = get_object_or_404(Model, name=name)
    context = _versions_context(request, model)
    status = 200 if context["in_flight"] else HTMX_STOP_POLLING
    return render(request, "registry/htmx/version_table.html", context, status=status)


@takes_uploads
@registry_page
@require_POST
def upload(request, name):
    model = get_object_or_404(Model, name=name)
    template = "registry/htmx/upload_result.html"
    try:
        raise_if_form_refused(request)  # the body was read by the upload middleware
        artifact = request.FILES.get("artifact")
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


@registry_page
@require_GET
def version_detail(request, name, version):
    version = get_object_or_404(
        ModelVersion.objects.select_related("model", "uploaded_by"), model__name=name, version=version
    )
    return render(request, "registry/version_detail.html", {"version": version, "model": version.model})


@polled
@registry_page
@require_GET
def version_status(request, name, version):
    version = get_object_or_404(
        ModelVersion.objects.select_related("model", "uploaded_by"), model__name=name, version=version
    )
    status = HTMX_STOP_POLLING if version.is_terminal else 200
    return render(request, "registry/htmx/version_facts.html", {"version": version}, status=status)


@registry_page
@require_safe
def download(request, name, version):
    version = get_object_or_404(ModelVersion.objects.select_related("model"), model__name=name, version=version)
    return artifact_response(request, version)
