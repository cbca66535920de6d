"""Streaming upload: the artifact goes to disk chunk by chunk, hashed on the way.

The file is never held whole in memory. The size limit is enforced from the
Content-Length before a byte of the body is read, and again while streaming
(the Content-Length also counts the multipart framing). WSGI gives Django no
body for a chunked request, so the API answers those 411 instead. A refused or interrupted upload leaves no file behind:
the temporary file is deleted when it is closed or dropped.

Going over the limit stops the parse quietly and marks the request, because the
body may first be read by middleware (CSRF reads request.POST) where an exception
would become a 500; views then call `raise_if_too_large(request)`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import QueryDict
from django.utils.datastructures import MultiValueDict

from controlplane.errors import PayloadTooLarge

# Multipart framing around the file (boundaries, headers, small fields) is small;
# this slack keeps a file of exactly the limit from being refused by Content-Length.
_MULTIPART_SLACK = 256 * 1024


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The artifact is larger than the limit of {limit} bytes ({limit / 1024**3:.2f} GiB). "
        "Ask an administrator to raise SLIPWAY_MAX_ARTIFACT_BYTES, or upload a smaller export."
    )


def raise_if_too_large(request) -> None:
    limit = getattr(request, "upload_too_large", None)
    if limit is not None:
        raise too_large(limit)


class HashedTemporaryUploadedFile(UploadedFile):
    """A file streamed to FILE_UPLOAD_TEMP_DIR, with its SHA-256 computed on the way."""

    def __init__(self, name, content_type, charset, content_type_extra=None):
        os.makedirs(settings.FILE_UPLOAD_TEMP_DIR, exist_ok=True)
        # Closed (and so deleted) by close(), by Django at the end of the request, or when dropped.
        file = tempfile.NamedTemporaryFile(suffix=".upload", dir=settings.FILE_UPLOAD_TEMP_DIR)  # noqa: SIM115
        super().__init__(file, name, content_type, 0, charset, content_type_extra)
        self.sha256 = ""

    def temporary_file_path(self) -> str:
        # FileSystemStorage moves a file that has one, instead of copying it.
        return self.file.name

    def close(self):
        try:
            return self.file.close()
        except FileNotFoundError:
            pass  # already moved into storage


def _hash_and_write(digest, file, chunk: bytes) -> None:
    digest.update(chunk)
    file.write(chunk)


class _ChunkSink:
    """Hashes and writes an upload's chunks, in order, on a helper thread.

    Reading and parsing the body keeps one core busy; SHA-256 and the write to the
    page cache cost about as much again, and both release the GIL on large buffers.
    Doing them here while the request thread reads the next chunk takes them off
    the critical path. At most `depth` chunks wait, so memory stays a few MiB
    whatever the file's size. One worker keeps the order; if the request dies
    without closing us, the executor's own weakref ends the thread once dropped.
    """

    def __init__(self, file, digest, depth: int = 4):
        self._file = file
        self._digest = digest
        self._depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-sink")
        self._pending: deque[Future] = deque()

    def put(self, chunk: bytes) -> None:
        if len(self._pending) >= self._depth:
            self._pending.popleft().result()  # waits for room; raises what writing raised
        self._pending.append(self._pool.submit(_hash_and_write, self._digest, self._file, chunk))

    def close(self) -> None:
        """Return once every chunk is hashed and written."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop without writing what still waits (the file is about to be deleted)."""
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


class StreamingArtifactUploadHandler(FileUploadHandler):
    chunk_size = 1024 * 1024

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.limit = settings.SLIPWAY_MAX_ARTIFACT_BYTES
        if content_length and content_length > self.limit + _MULTIPART_SLACK:
            self.request.upload_too_large = self.limit
            return QueryDict(), MultiValueDict()  # "parsed": nothing, without reading the body
        return None

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.limit = getattr(self, "limit", settings.SLIPWAY_MAX_ARTIFACT_BYTES)
        self.digest = hashlib.sha256()
        self.received = 0
        self.file = HashedTemporaryUploadedFile(
            self.file_name, self.content_type, self.charset, self.content_type_extra
        )
        self.sink = _ChunkSink(self.file, self.digest)

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.sink.abort()
            self.file.close()  # deletes the partial file now
            self.request.upload_too_large = self.limit
            raise StopUpload(connection_reset=True)
        self.sink.put(raw_data)
        return None

    def file_complete(self, file_size):
        self.sink.close()
        self.file.seek(0)
        self.file.size = file_size
        self.file.sha256 = self.digest.hexdigest()
        return self.file

    def upload_interrupted(self):
        if hasattr(self, "file"):
            self.sink.abort()
            self.file.close()
