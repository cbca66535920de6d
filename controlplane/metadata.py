"""OPTIONS answers: what each POST or PUT takes, from the request serializer the view declares.

DRF's SimpleMetadata describes a method by the view's serializer_class, which in this API
is what an endpoint answers (a version, a deployment): every field read-only, as if a POST
took nothing. The serializer a method takes is declared once, for the OpenAPI schema
(drf-spectacular's `extend_schema(request=...)`); OPTIONS asks the same schema object, so
the two descriptions cannot disagree.
"""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.metadata import SimpleMetadata


class Metadata(SimpleMetadata):
    def determine_actions(self, request, view):
        actions = super().determine_actions(request, view)  # leaves view.request a clone of the last method's
        for method in actions:
            handler = getattr(view, getattr(view, "action_map", {}).get(method.lower(), method.lower()), None)
            schema_class = getattr(handler, "kwargs", {}).get("schema")  # where extend_schema puts a method's
            if schema_class is None:
                continue  # nothing declared: the view's own serializer is what it takes
            schema = schema_class()
            schema.view, schema.method = view, method
            declared = schema.get_request_serializer()
            if isinstance(declared, dict):  # by media type: {"multipart/form-data": VersionUploadSerializer}
                declared = next(iter(declared.values()), None)
            if declared is None:
                actions[method] = {}  # the method takes no body
            elif isinstance(declared, type) and issubclass(declared, serializers.BaseSerializer):
                actions[method] = self.get_serializer_info(declared(context=view.get_serializer_context()))
            elif isinstance(declared, serializers.BaseSerializer):
                actions[method] = self.get_serializer_info(declared)
        return actions
