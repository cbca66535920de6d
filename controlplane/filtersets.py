from datetime import UTC

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Q
from django_filters.fields import IsoDateTimeField
from django_filters.rest_framework import DjangoFilterBackend

from controlplane.models import AuditEvent, Outcome


class FilterBackend(DjangoFilterBackend):
    """django-filter's, keeping the bound filterset on the view: a list can tell whether any filter was given."""

    def get_filterset(self, request, queryset, view):
        view.filterset = super().get_filterset(request, queryset, view)
        return view.filterset


class UTCDateTimeField(IsoDateTimeField):
    """An ISO 8601 time with any offset, handed to the database in UTC.

    PostgreSQL refuses offsets beyond ±15:59 that Python accepts (up to ±23:59).
    """

    default_error_messages = {
        "invalid": "Enter a date, or a date and time, in ISO 8601: 2026-11-23, 2026-11-23T14:30:00Z "
        "or 2026-11-23T14:30:00+01:00.",
    }

    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValidationError("This time is out of range: use a date between the years 1 and 9999.") from None


class UTCDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCDateTimeField


class IntegerFilter(django_filters.NumberFilter):
    field_class = forms.IntegerField  # NumberFilter's decimal would match 1.5 to event 1


class AuditEventFilterSet(django_filters.FilterSet):
    """The audit log's filters, shared by the API, the page and the export."""

    actor = django_filters.CharFilter(lookup_expr="icontains")
    action = django_filters.CharFilter(method="filter_action", label="Action, or a prefix ending in '.' (model.)")
    target = django_filters.CharFilter(method="filter_target", label="Target type, 'type:id', or text contained")
    environment = django_filters.CharFilter(
        method="filter_environment",
        label="Environment name: the environment itself, its deployments and their rollouts",
    )
    search = django_filters.CharFilter(
        method="filter_search", label="Text contained in the message (reasons), the target's text or the actor"
    )
    outcome = django_filters.ChoiceFilter(
        choices=Outcome.choices,
        error_messages={"invalid_choice": f"%(value)s is not an outcome; use one of {', '.join(Outcome.values)}."},
    )
    since = UTCDateTimeFilter(field_name="occurred_at", lookup_expr="gte", label="From (UTC)")
    until = UTCDateTimeFilter(field_name="occurred_at", lookup_expr="lt", label="Until (UTC)")
    event = IntegerFilter(
        field_name="id",
        label="One event, by its id",
        error_messages={"invalid": "event is an event's id: a whole number, such as 42."},
    )

    class Meta:
        model = AuditEvent
        fields = ["actor", "action", "target", "environment", "search", "outcome", "since", "until", "event"]

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

    def filter_environment(self, queryset, name, value):
        """Exact name. Events recorded before events carried their environment are not found by it."""
        return queryset.filter(environment=value.strip())

    def filter_search(self, queryset, name, value):
        """Case-insensitive substring of the message (where reasons and refusals go), target text or actor.

        Not before/after: searching JSON as text would match keys and punctuation too.
        """
        value = value.strip()
        return queryset.filter(
            Q(message__icontains=value) | Q(target_repr__icontains=value) | Q(actor__icontains=value)
        )
