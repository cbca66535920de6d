"""Runtime settings: every field's allowed values, and messages that say what is allowed."""

import json

import pytest

from deployments.runtime_settings import (
    InvalidSettings,
    cpu_millicores,
    memory_bytes,
    parse_runtime_settings,
    settings_to_dict,
)
from deployments.targets.base import RuntimeSettings


def _errors(data: dict, defaults: RuntimeSettings | None = None) -> dict[str, list[str]]:
    with pytest.raises(InvalidSettings) as caught:
        parse_runtime_settings(data, defaults)
    assert isinstance(caught.value, ValueError)
    return caught.value.fields


def test_nothing_given_means_the_defaults():
    assert parse_runtime_settings(None) == RuntimeSettings()
    assert parse_runtime_settings({}) == RuntimeSettings()


def test_given_values_override_the_defaults_passed_in():
    defaults = RuntimeSettings(replicas=3, memory_limit="2Gi", max_batch_size=32)
    settings = parse_runtime_settings({"replicas": 5, "cpu_request": "500m"}, defaults)
    assert settings == RuntimeSettings(replicas=5, cpu_request="500m", memory_limit="2Gi", max_batch_size=32)


def test_a_full_set_round_trips_through_json():
    settings = RuntimeSettings(
        replicas=4,
        cpu_request="250m",
        cpu_limit="1.5",
        memory_request="512Mi",
        memory_limit="1G",
        gpus=1,
        max_batch_size=64,
        max_delay_ms=5.0,
    )
    data = json.loads(json.dumps(settings_to_dict(settings)))
    assert data["cpu_limit"] == "1.5"
    assert parse_runtime_settings(data) == settings


@pytest.mark.parametrize(("field", "low", "high"), [("replicas", 1, 100), ("gpus", 0, 16), ("max_batch_size", 1, 4096)])
def test_whole_number_fields_take_their_range_and_nothing_else(field, low, high):
    assert getattr(parse_runtime_settings({field: low}), field) == low
    assert getattr(parse_runtime_settings({field: high}), field) == high
    for bad in (low - 1, high + 1, 2.5, "3", True, None):
        errors = _errors({field: bad})
        assert errors == {field: [f"must be a whole number from {low} to {high}, not {bad!r}"]}


def test_max_delay_ms_takes_any_number_from_0_to_10000():
    assert parse_runtime_settings({"max_delay_ms": 0}).max_delay_ms == 0.0
    assert parse_runtime_settings({"max_delay_ms": 2.5}).max_delay_ms == 2.5
    assert parse_runtime_settings({"max_delay_ms": 10000}).max_delay_ms == 10000.0
    for bad in (-1, 10000.5, "2", False):
        assert _errors({"max_delay_ms": bad}) == {
            "max_delay_ms": [f"must be a number of milliseconds from 0 to 10000, not {bad!r}"]
        }


@pytest.mark.parametrize(
    ("text", "millicores"), [("500m", 500), ("1", 1000), ("1.5", 1500), ("0.25", 250), ("2000m", 2000)]
)
def test_cpu_is_cores_or_millicores(text, millicores):
    assert cpu_millicores(text) == millicores
    assert parse_runtime_settings({"cpu_request": text, "cpu_limit": text}).cpu_request == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("500M", "is not a CPU amount"),
        ("1 core", "is not a CPU amount"),
        ("-1", "is not a CPU amount"),
        (".5", "is not a CPU amount"),
        ("0.5m", "finer than 1m"),
        ("0.0001", "finer than 1m"),
        ("0", "no CPU at all"),
        ("0m", "no CPU at all"),
    ],
)
def test_a_bad_cpu_amount_is_refused_with_what_is_allowed(text, says):
    errors = _errors({"cpu_limit": text})
    assert list(errors) == ["cpu_limit"]
    assert says in errors["cpu_limit"][0]
    assert repr(text) in errors["cpu_limit"][0]


def test_cpu_may_be_a_json_number_as_kubernetes_takes_it():
    settings = parse_runtime_settings({"cpu_request": 0.5, "cpu_limit": 2})
    assert (settings.cpu_request, settings.cpu_limit) == ("0.5", "2")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("1G", 10**9),
        ("128M", 128 * 10**6),
        ("2048Ki", 2**21),
        ("1048576", 2**20),
    ],
)
def test_memory_is_bytes_with_an_optional_suffix(text, size):
    assert memory_bytes(text) == size
    assert parse_runtime_settings({"memory_limit": text}).memory_limit == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1GB", "is not a memory amount"),
        ("512mi", "is not a memory amount"),
        ("1gi", "is not a memory amount"),
        ("lots", "is not a memory amount"),
        ("512", "did you leave out a unit"),
        ("0", "no memory at all"),
    ],
)
def test_a_bad_memory_amount_is_refused_with_what_is_allowed(text, says):
    errors = _errors({"memory_request": text})
    assert list(errors) == ["memory_request"]
    assert says in errors["memory_request"][0]


def test_an_empty_or_null_quantity_unsets_a_default():
    defaults = RuntimeSettings(cpu_limit="2", memory_limit="4Gi")
    settings = parse_runtime_settings({"cpu_limit": "", "memory_limit": None}, defaults)
    assert (settings.cpu_limit, settings.memory_limit) == ("", "")


def test_a_quantity_of_another_type_is_refused():
    assert _errors({"memory_limit": ["1Gi"]}) == {
        "memory_limit": ['must be a quantity as text, e.g. "512Mi", or empty for none']
    }


def test_a_request_may_equal_its_limit_but_not_exceed_it():
    settings = parse_runtime_settings(
        {"cpu_request": "1000m", "cpu_limit": "1", "memory_request": "1Gi", "memory_limit": "1024Mi"}
    )
    assert settings.cpu_request == "1000m"
    errors = _errors({"cpu_request": "1.5", "cpu_limit": "1", "memory_request": "2G", "memory_limit": "1Gi"})
    assert errors == {
        "cpu_request": ["1.5 is more than cpu_limit 1; a request may not exceed its limit"],
        "memory_request": ["2G is more than memory_limit 1Gi; a request may not exceed its limit"],
    }


def test_a_request_is_compared_with_a_limit_from_the_defaults():
    errors = _errors({"memory_request": "3Gi"}, RuntimeSettings(memory_limit="2Gi"))
    assert errors == {"memory_request": ["3Gi is more than memory_limit 2Gi; a request may not exceed its limit"]}


def test_unknown_keys_are_refused_with_the_known_ones():
    errors = _errors({"replica": 3, "memory": "1Gi"})
    known = "replicas, cpu_request, cpu_limit, memory_request, memory_limit, gpus, max_batch_size, max_delay_ms"
    assert errors == {
        "memory": [f"is not a runtime setting; the known ones are {known}"],
        "replica": [f"is not a runtime setting; the known ones are {known}"],
    }


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(InvalidSettings) as caught:
        parse_runtime_settings({"replicas": 0, "gpus": 17, "cpu_limit": "fast", "colour": "red"})
    assert sorted(caught.value.fields) == ["colour", "cpu_limit", "gpus", "replicas"]
    assert "replicas: must be a whole number from 1 to 100, not 0" in str(caught.value)


def test_settings_that_are_not_an_object_are_refused():
    assert list(_errors(["replicas", 3])) == ["settings"]
