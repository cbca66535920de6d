"""The audit log as a file an auditor keeps: JSON Lines or CSV, streamed row by row.

Every row carries every stored field, `prev_hash` and `hash` included, with `occurred_at`
written exactly as the hash covers it (UTC, ISO 8601), so each row can be re-verified
from the file alone: see `AuditEvent.compute_hash`.
"""

from __future__ import annotations

import csv
import datetime
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone

FIELDS = (
    "id",
    "occurred_at",
    "actor",
    "actor_user_id",
    "action",
    "target_type",
    "target_id",
    "target_repr",
    "environment",
    "before",
    "after",
    "outcome",
    "message",
    "request_id",
    "source_ip",
    "prev_hash",
    "hash",
)
FORMATS = {"jsonl": "application/jsonl; charset=utf-8", "csv": "text/csv; charset=utf-8"}
CHUNK_SIZE = 2000  # rows fetched per round trip from one server-side cursor


def rows(queryset: QuerySet) -> Iterator[dict[str, Any]]:
    """The events as plain dicts, oldest first, read through a cursor: memory does not grow with the log."""
    for row in queryset.order_by("id").values(*FIELDS).iterator(chunk_size=CHUNK_SIZE):
        row["occurred_at"] = row["occurred_at"].astimezone(datetime.UTC).isoformat()
        yield row


def as_jsonl(events: Iterable[dict[str, Any]]) -> Iterator[str]:
    for row in events:
        yield json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


class _Line:
    """A file-like object that hands back what csv.writer writes, so each row is yielded at once."""

    def write(self, value: str) -> str:
        return value


def as_csv(events: Iterable[dict[str, Any]]) -> Iterator[str]:
    """One column per field; before and after as JSON text, empty when there is none.

    Values are written as stored (no quoting of leading '=' or '+'), since altering them would
    break re-verification: open the file in a spreadsheet with formulas disabled.
    """
    writer = csv.writer(_Line())
    yield writer.writerow(FIELDS)
    for row in events:
        for name in ("before", "after"):
            value = row[name]
            row[name] = "" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
        yield writer.writerow(["" if row[name] is None else row[name] for name in FIELDS])


def response(queryset: QuerySet, fmt: str) -> StreamingHttpResponse:
    """A download of `queryset` in `fmt` ("jsonl" or "csv"), named after the moment it was taken."""
    encode = as_jsonl if fmt == "jsonl" else as_csv
    answer = StreamingHttpResponse(encode(rows(queryset)), content_type=FORMATS[fmt])
    answer["Content-Disposition"] = f'attachment; filename="slipway-audit-{timezone.now():%Y%m%dT%H%M%SZ}.{fmt}"'
    return answer
