"""An audit event's before/after as the keys that changed (controlplane.changes, no database)."""

from __future__ import annotations

from controlplane.changes import Change, diff, flatten


def test_changed_added_and_removed_keys_in_the_order_they_first_appear():
    before = {"state": "paused", "weight": 50, "reason": "slow"}
    after = {"state": "progressing", "weight": 50, "step": 2}
    assert diff(before, after) == [
        Change("state", "changed", "paused", "progressing"),
        Change("reason", "removed", old="slow"),
        Change("step", "added", new=2),
    ]


def test_nested_objects_are_compared_by_dotted_keys():
    before = {"settings": {"replicas": 1, "batching": {"max_batch_size": 8, "max_delay_ms": 5}}}
    after = {"settings": {"replicas": 3, "batching": {"max_batch_size": 8}}}
    assert diff(before, after) == [
        Change("settings.replicas", "changed", 1, 3),
        Change("settings.batching.max_delay_ms", "removed", old=5),
    ]


def test_a_creation_is_all_additions_and_a_deletion_all_removals():
    assert diff(None, {"name": "iris", "tags": {"team": "ml"}}) == [
        Change("name", "added", new="iris"),
        Change("tags.team", "added", new="ml"),
    ]
    assert diff({"version": 2}, None) == [Change("version", "removed", old=2)]
    assert diff(None, None) == []


def test_nothing_is_reported_when_nothing_changed():
    assert diff({"pinned": False, "env": {"a": 1}}, {"env": {"a": 1}, "pinned": False}) == []


def test_a_change_of_json_type_is_a_change_even_when_python_calls_it_equal():
    assert diff({"ready": 1, "n": 2}, {"ready": True, "n": 2.0}) == [
        Change("ready", "changed", 1, True),
        Change("n", "changed", 2, 2.0),
    ]


def test_lists_and_empty_objects_are_compared_whole():
    assert flatten({"steps": [{"set_weight": 50}], "config": {}}) == {"steps": [{"set_weight": 50}], "config": {}}
    assert diff({"steps": [1, 2], "config": {}}, {"steps": [1, 3], "config": {"x": 1}}) == [
        Change("steps", "changed", [1, 2], [1, 3]),
        Change("config", "removed", old={}),
        Change("config.x", "added", new=1),
    ]


def test_a_value_that_is_not_an_object_is_still_shown():
    assert diff("old text", {"a": 1}) == [Change("(value)", "removed", old="old text"), Change("a", "added", new=1)]
