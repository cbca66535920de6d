"""State machines stored in a status column, moved by compare-and-set."""

from __future__ import annotations

from django.db import models


def compare_and_set(
    model: type[models.Model],
    pk: int,
    transitions: dict[str, tuple[str, ...]],
    expected: str,
    new: str,
    *,
    where: dict | None = None,
    **fields,
) -> bool:
    """Move row `pk` from `expected` to `new` if that transition is allowed.

    False when the row was no longer in `expected` (or no longer matches `where`): someone else got
    there first. An illegal transition is a programming error and raises.
    """
    if new not in transitions[expected]:
        raise ValueError(f"illegal {model._meta.model_name} transition {expected} -> {new}")
    return model.objects.filter(pk=pk, status=expected, **(where or {})).update(status=new, **fields) == 1
