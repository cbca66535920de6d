"""Artifact downloads: the whole file, its headers alone (HEAD), or one byte range (a resumed download).

A multi-GiB artifact fetched over a flaky link is resumed with `curl -C -` or `wget -c`,
which ask for `Range: bytes=N-`. One range is served (206); several, or a malformed header,
get the whole file (RFC 9110 lets a server ignore Range), and a range past the end gets 416.
The ETag is the artifact's SHA-256, so `If-Range` resumes only the same bytes, a cache that
holds the file revalidates it with `If-None-Match` (304, nothing sent), and `If-Match` makes
sure of the bytes before any is sent (412 when they changed).
"""

from __future__ import annotations

import re

from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from django.utils.cache import get_conditional_response
from django.utils.http import content_disposition_header

from registry.models import ModelVersion

# 19 digits: any file size; a longer number would only make int() refuse it (a 500).
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$", re.IGNORECASE)
_CHUNK = 1024 * 1024


def artifact_response(request, version: ModelVersion) -> HttpResponse:
    etag = f'"{version.sha256}"'
    conditional = get_conditional_response(request, etag=etag)  # 304 or 412, before the file is opened
    if conditional is not None:
        conditional["ETag"] = etag
        return conditional
    wanted = request.headers.get("Range")
    if wanted and request.headers.get("If-Range", etag) != etag:
        wanted = None  # the client holds other bytes: start again
    span = byte_range(wanted, version.size) if wanted and request.method == "GET" else None
    if span == "unsatisfiable":
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{version.size}"
        return response
    if request.method == "HEAD":
        response = HttpResponse(content_type="application/octet-stream")
        response["Content-Length"] = str(version.size)
    elif span is not None:
        start, end = span
        response = StreamingHttpResponse(
            _Slice(version.artifact.open("rb"), start, end - start + 1),
            status=206,
            content_type="application/octet-stream",
        )
        response["Content-Length"] = str(end - start + 1)
        response["Content-Range"] = f"bytes {start}-{end}/{version.size}"
    else:
        response = FileResponse(version.artifact.open("rb"), content_type="application/octet-stream")
    response["Content-Disposition"] = content_disposition_header(True, version.filename)
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = etag
    response["X-Checksum-SHA256"] = version.sha256
    return response


def byte_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(first, last) byte of a single `bytes=` range; "unsatisfiable"; or None to send the whole file."""
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # several ranges, another unit, or nonsense
    if size == 0:
        return "unsatisfiable"  # no byte to send
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)  # the last N bytes
        if suffix == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    start, stop = int(first), int(last) if last else None
    if stop is not None and stop < start:
        return None  # not a range: the whole file
    if start >= size:
        return "unsatisfiable"
    return start, size - 1 if stop is None else min(stop, size - 1)


class _Slice:
    """`length` bytes of an open file from `start`, in 1 MiB reads; closed when the response is."""

    def __init__(self, file, start: int, length: int):
        self.file, self.left = file, length
        file.seek(start)

    def __iter__(self):
        while self.left > 0:
            chunk = self.file.read(min(_CHUNK, self.left))
            if not chunk:
                return
            self.left -= len(chunk)
            yield chunk

    def close(self) -> None:
        self.file.close()
