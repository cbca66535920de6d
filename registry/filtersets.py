import django_filters
from django.db.models import Q

from registry.models import Model, ModelVersion, VersionStatus


class ModelFilterSet(django_filters.FilterSet):
    search = django_filters.CharFilter(method="filter_search", label="Name or description contains")

    class Meta:
        model = Model
        fields = ["search"]

    def filter_search(self, queryset, name, value):
        return queryset.filter(Q(name__icontains=value) | Q(description__icontains=value))


class ModelVersionFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=VersionStatus.choices,
        error_messages={"invalid_choice": f"%(value)s is not a status; use one of {', '.join(VersionStatus.values)}."},
    )

    class Meta:
        model = ModelVersion
        fields = ["status"]
