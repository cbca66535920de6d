"""The API's JSON renderer (orjson) writes what DRF's own JSONRenderer writes, byte for byte."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
import zoneinfo

import pytest
from django.utils.translation import gettext_lazy
from rest_framework.exceptions import ErrorDetail
from rest_framework.renderers import JSONRenderer as DRFJSONRenderer
from rest_framework.utils.serializer_helpers import ReturnDict

from controlplane.renderers import JSONRenderer

UTC = datetime.UTC
VALUES = {
    "utc datetime": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "microseconds": datetime.datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC),
    "zoneinfo UTC": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=zoneinfo.ZoneInfo("UTC")),
    "summer in Paris": datetime.datetime(2026, 7, 2, 3, 4, 5, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
    "naive datetime": datetime.datetime(2026, 1, 2, 3, 4, 5),
    "date": datetime.date(2026, 1, 2),
    "time": datetime.time(3, 4, 5, 123456),
    "timedelta": datetime.timedelta(seconds=90),
    "decimal": decimal.Decimal("1.10"),
    "uuid": uuid.UUID(int=5),
    "lazy text": gettext_lazy("Not found."),
    "error detail": ErrorDetail("Choose a model file to upload.", code="invalid"),
    "unicode and escapes": 'héllo ✓ "q" \\ \x01 </script> \t\n',
    "javascript line breaks": "a\u2028b\u2029c",
    "integers": [0, -1, 2**63 - 1, -(2**63)],
    "past 64 bits": 2**70,
    "DRF's ordered dict, integer key": ReturnDict({"a": (1, 2), 3: None, "b": [True, False]}, serializer=None),
    "set": {1},
    "bytes": b"abc",
    "empty": {},
}


@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_the_same_bytes_as_drfs_renderer(value):
    data = {"results": [{"value": value}], "count": 1, "next": None}
    assert JSONRenderer().render(data) == DRFJSONRenderer().render(data)


def test_floats_have_the_same_values():
    # Some are spelled otherwise (0.00001 for 1e-05): the same numbers to any JSON reader.
    value = [0.1, 1e-05, 1e16, 3.5, -0.0, 123456789.123, 5e-324]
    assert json.loads(JSONRenderer().render(value)) == json.loads(DRFJSONRenderer().render(value)) == value


def test_indented_output_when_asked_for():
    data = {"a": [1, 2]}
    indented = JSONRenderer().render(data, "application/json; indent=4")
    assert indented == DRFJSONRenderer().render(data, "application/json; indent=4")
    assert indented.startswith(b'{\n    "a"')


def test_nothing_renders_as_an_empty_body():
    assert JSONRenderer().render(None) == b""


def test_the_api_answers_through_it(api):
    response = api.get("/api/v1/models/")
    assert isinstance(response.accepted_renderer, JSONRenderer)
    assert response["Content-Type"] == "application/json"
    assert response.content == DRFJSONRenderer().render(response.data)


def test_nan_and_infinities_are_written_as_null_where_drf_would_answer_500():
    # Uploads refuse them (tests/registry/test_upload_api.py), so none can come from the database.
    assert JSONRenderer().render({"loss": float("nan"), "big": float("inf")}) == b'{"loss":null,"big":null}'
    with pytest.raises(ValueError):
        DRFJSONRenderer().render({"loss": float("nan")})


def test_drfs_json_settings_changed_from_their_defaults_are_still_obeyed():
    class Escaping(JSONRenderer):
        ensure_ascii = True  # UNICODE_JSON = False

    class Spaced(JSONRenderer):
        compact = False  # COMPACT_JSON = False

    data = {"name": "héllo", "n": [1, 2]}
    assert Escaping().render(data) == b'{"name":"h\\u00e9llo","n":[1,2]}'
    assert Spaced().render(data) == '{"name": "héllo", "n": [1, 2]}'.encode()
