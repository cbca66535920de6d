import django_filters
from django.db.models import Q

from controlplane.models import AuditEvent, Outcome


class AuditEventFilterSet(django_filters.FilterSet):
    actor = django_filters.CharFilter(lookup_expr="icontains")
    action = django_filters.CharFilter(method="filter_action", label="Action, or a prefix ending in '.' (model.)")
    target = django_filters.CharFilter(method="filter_target", label="Target type, 'type:id', or text contained")
    outcome = django_filters.ChoiceFilter(
        choices=Outcome.choices,
        error_messages={"invalid_choice": f"%(value)s is not an outcome; use one of {', '.join(Outcome.values)}."},
    )
    since = django_filters.IsoDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="occurred_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["actor", "action", "target", "outcome", "since", "until"]

    def filter_action(self, queryset, name, value):
        value = value.strip()
        if value.endswith("."):
            return queryset.filter(action__startswith=value)
        return queryset.filter(action=value)

    def filter_target(self, queryset, name, value):
        value = value.strip()
        kind, sep, ident = value.partition(":")
        if sep:
            return queryset.filter(target_type=kind, target_id=ident)
        return queryset.filter(Q(target_type=value) | Q(target_repr__icontains=value))
