"""Streaming upload: multipart/form-data read in 1 MiB steps, the file hashed and written on the way.

Every multipart body, API or browser, is read here, never by Django's own parser:
python-multipart finds the boundaries with bytes.find, about 0.2 s of CPU per GiB
where Django's parser took 0.85-1.4, and the request thread's time is what an
upload's speed is made of (the hashing and the write run beside it, see ChunkSink).
Under gunicorn the body is read from the connection itself (see body_chunks).

The file is never held whole in memory. The size limit is enforced from the
Content-Length before a byte of the body is read, and again while streaming
(the Content-Length also counts the multipart framing). WSGI gives Django no
body for a chunked request, so the API answers those 411 instead. A refused or
interrupted upload leaves no file behind: the temporary file is deleted when it
is closed or dropped.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import html
import logging
import mmap
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.files.uploadedfile import UploadedFile
from django.http import QueryDict, UnreadablePostError
from django.utils.datastructures import MultiValueDict
from django.utils.http import parse_header_parameters
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser
from rest_framework.parsers import BaseParser, DataAndFiles

from controlplane.errors import (
    InsufficientStorage,
    InvalidInput,
    LengthRequired,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    as_service_error,
)

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# A write refused for want of room: the disk is full, a quota is reached, or the file is over the
# largest size the process may write (RLIMIT_FSIZE).
FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

# Multipart framing around the file (boundaries, headers, small fields) is small;
# this slack keeps a file of exactly the limit from being refused by Content-Length.
_MULTIPART_SLACK = 256 * 1024


def storage_full(exc: OSError, where: str) -> InsufficientStorage:
    """A full disk as a 507 that says so; the server's log gets the path for the administrator."""
    log.error("an upload could not be stored in %s: %s", where, exc)
    return InsufficientStorage(
        f"The server ran out of room while storing the artifact ({os.strerror(exc.errno)}). Nothing was "
        f"kept. Ask an administrator to free space in {where} (or raise its quota), then upload it again."
    )


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The artifact is larger than the limit of {limit} bytes ({limit / 1024**3:.2f} GiB). "
        "Ask an administrator to raise SLIPWAY_MAX_ARTIFACT_BYTES, or upload a smaller export."
    )


# A temporary upload file not written to for this long belongs to no upload: the worker that wrote it
# died (killed, or stopped before the upload ended) before it could delete it.
STALE_UPLOAD_S = 24 * 3600
_next_sweep = 0.0  # monotonic time of this process's next look for such files


def sweep_stale_uploads() -> list[str]:
    """Delete the temporary upload files that dead workers left in FILE_UPLOAD_TEMP_DIR; returns their names.

    A live upload writes its file at least every SLIPWAY_UPLOAD_IDLE_TIMEOUT_S (or is refused), so a
    day-old one is garbage. Runs as an upload starts, at most once an hour in each process.
    """
    global _next_sweep
    if time.monotonic() < _next_sweep:
        return []
    _next_sweep = time.monotonic() + 3600
    cutoff = time.time() - max(STALE_UPLOAD_S, 2 * settings.SLIPWAY_UPLOAD_IDLE_TIMEOUT_S)
    removed = []
    try:
        with os.scandir(settings.FILE_UPLOAD_TEMP_DIR) as entries:
            for entry in entries:
                if not (entry.name.startswith("tmp") and entry.name.endswith(".upload")):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed.append(entry.name)
                except FileNotFoundError:
                    continue  # another process's sweep, or its upload kept it
    except OSError as exc:  # never a reason to refuse the upload that asked
        log.warning("could not look for stale temporary upload files: %s", exc)
    if removed:
        log.warning("deleted %d temporary upload file(s) left by dead workers: %s", len(removed), ", ".join(removed))
    return removed


class HashedTemporaryUploadedFile(UploadedFile):
    """A file streamed to FILE_UPLOAD_TEMP_DIR, with its SHA-256 computed on the way."""

    def __init__(self, name, content_type, charset, content_type_extra=None):
        os.makedirs(settings.FILE_UPLOAD_TEMP_DIR, exist_ok=True)
        sweep_stale_uploads()
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


class DirectWriter:
    """Writes a file's chunks past the page cache (O_DIRECT), through one block-aligned buffer.

    An upload is read back once, by validation, and then mostly never: keeping it in the page
    cache would only push out what is read often, and filling fresh cache pages is what writing
    costs most (2 s of CPU per GiB where a VM's memory has to be faulted in first, 0.2-0.5
    otherwise; O_DIRECT 0.1). Chunks are copied into an mmap'd (so page-aligned) buffer, written
    when it is full; the last, partial block is padded and the file truncated to its size.
    """

    BLOCK = 4096

    def __init__(self, path: str, capacity: int):
        if capacity % self.BLOCK:
            raise ValueError(f"the buffer must hold whole {self.BLOCK}-byte blocks, not {capacity} bytes")
        self._fd = os.open(path, os.O_WRONLY | os.O_DIRECT)  # OSError where the filesystem refuses it
        try:
            self._buffer = mmap.mmap(-1, capacity)
        except BaseException:
            os.close(self._fd)
            raise
        self._filled = 0
        self._size = 0
        self._direct = True

    def write(self, chunk: bytes) -> None:
        view, capacity = memoryview(chunk), len(self._buffer)
        self._size += len(view)
        while view:
            n = min(len(view), capacity - self._filled)
            self._buffer[self._filled : self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == capacity:
                self._flush(capacity)

    def _flush(self, length: int) -> None:
        written = 0
        with memoryview(self._buffer) as buffer:
            while written < length:
                try:
                    written += os.write(self._fd, buffer[written:length])
                except OSError as exc:
                    if exc.errno != errno.EINVAL or not self._direct:
                        raise
                    self._without_direct()
        self._filled = 0

    def _without_direct(self) -> None:
        """Go on with plain writes: the filesystem refused O_DIRECT only when written to, or a short
        write (the disk filling up) left the offset off a block boundary, where O_DIRECT cannot write
        but a plain write finds the real error (ENOSPC, EFBIG)."""
        self._direct = False
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)

    def close(self) -> None:
        """Write what is left and give the file its exact size."""
        try:
            if self._filled:
                self._flush(-(-self._filled // self.BLOCK) * self.BLOCK)
                os.ftruncate(self._fd, self._size)
        finally:
            self.abort()

    def abort(self) -> None:
        """Let go of the descriptor and the buffer (deleting the file is its owner's job); safe twice."""
        if not self._buffer.closed:
            os.close(self._fd)
            self._buffer.close()


class BufferedWriter:
    """The fallback where O_DIRECT is refused: plain writes to the temporary file."""

    def __init__(self, file):
        self.write = file.write

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def file_writer(file: HashedTemporaryUploadedFile) -> DirectWriter | BufferedWriter:
    try:
        return DirectWriter(file.temporary_file_path(), CHUNK)
    except OSError:
        return BufferedWriter(file)


class ChunkSink:
    """Hashes and writes an upload's chunks, in order, on two helper threads.

    Reading and parsing the body keeps one thread busy; SHA-256 and the write cost about
    as much again, and both release the GIL on large buffers.
    Each gets a thread of its own, so the request thread waits for the slower of the
    two rather than for their sum. At most `depth` chunks wait, so memory stays a few
    MiB whatever the file's size. One worker per job keeps the order; if the request
    dies without closing us, the executors' own weakrefs end the threads once dropped.
    """

    def __init__(self, writer: DirectWriter | BufferedWriter, digest, depth: int = 4):
        self._writer = writer
        self._hash, self._write = digest.update, writer.write
        self._depth = depth
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix=f"upload-{job}") for job in ("hash", "write")]
        self._pending: deque[tuple[Future, Future]] = deque()

    def put(self, chunk: bytes) -> None:
        if len(self._pending) >= self._depth:
            self._wait(self._pending.popleft())  # waits for room
        hashing, writing = self._pools
        self._pending.append((hashing.submit(self._hash, chunk), writing.submit(self._write, chunk)))

    @staticmethod
    def _wait(jobs: tuple[Future, Future]) -> None:
        for job in jobs:
            job.result()  # raises what hashing or writing raised

    def close(self) -> None:
        """Return once every chunk is hashed and written."""
        try:
            while self._pending:
                self._wait(self._pending.popleft())
        except BaseException:
            self.abort()
            raise
        self._shutdown()
        self._writer.close()

    def abort(self) -> None:
        """Stop without writing what still waits (the file is about to be deleted)."""
        self._pending.clear()
        self._shutdown()
        self._writer.abort()

    def _shutdown(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)


def not_multipart(detail: str) -> InvalidInput:
    return InvalidInput(
        f"The body is not valid multipart/form-data ({detail}). Let the client build it, for example "
        "curl -H 'Authorization: Bearer <token>' -F artifact=@model.pt -F signature='{...}' <url>."
    )


def header_parameters(value: str, what: str) -> tuple[str, dict[str, str]]:
    try:
        return parse_header_parameters(value)
    except ValueError as exc:  # an RFC 2231 parameter in a charset Python does not know
        raise not_multipart(f"{what} cannot be read: {exc}") from exc


def clean_file_name(name: str) -> str | None:
    """The last path component, printable characters only (Django's own rules); None when nothing is left.

    Only ever shown: stored files get a name of our own.
    """
    name = html.unescape(name).rsplit("/")[-1].rsplit("\\")[-1]
    name = "".join(char for char in name if char.isprintable())
    return None if name in {"", ".", ".."} else name


class _FileWriter:
    """One file part on its way to disk: size limit, SHA-256 and the write, off the request thread."""

    def __init__(self, name: str, content_type: str, charset: str | None, content_type_extra: dict, limit: int):
        self.limit = limit
        self.received = 0
        self.digest = hashlib.sha256()
        self.file = HashedTemporaryUploadedFile(name, content_type, charset, content_type_extra)
        self.sink = ChunkSink(file_writer(self.file), self.digest)

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limit:
            raise too_large(self.limit)
        self.sink.put(chunk)

    def complete(self) -> HashedTemporaryUploadedFile:
        self.sink.close()
        self.file.seek(0)
        self.file.size = self.received
        self.file.sha256 = self.digest.hexdigest()
        return self.file

    def abort(self) -> None:
        self.sink.abort()
        self.file.close()  # deletes the partial file now


def _over(limit: int | None, count: int) -> bool:
    return limit is not None and count > limit


class _Form:
    """python-multipart's callbacks, gathering fields and streaming files as Django's parser would.

    Fields are decoded text within DATA_UPLOAD_MAX_MEMORY_SIZE and DATA_UPLOAD_MAX_NUMBER_FIELDS;
    a file part without a usable name is skipped, like an empty file input.
    """

    def __init__(self, encoding: str):
        self.encoding = encoding
        self.data = QueryDict(mutable=True)
        self.files = MultiValueDict()
        self.ended = False
        self._field_bytes = 0
        self._fields = self._file_count = 0
        self._field: list[bytes] = []
        self._header_value: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._name = ""
        self._value: list[bytes] | None = None  # the field being read
        self._writer: _FileWriter | None = None  # or the file

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_part,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._value = self._writer = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field.append(data[start:end])

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value.append(data[start:end])

    def _header_end(self) -> None:
        name = b"".join(self._field).decode("latin-1").strip().lower()
        self._headers[name] = b"".join(self._header_value).decode(self.encoding, "replace").strip()
        self._field, self._header_value = [], []

    def _headers_finished(self) -> None:
        disposition, params = header_parameters(
            self._headers.get("content-disposition", ""), "a part's Content-Disposition"
        )
        name = params.get("name")
        if disposition != "form-data" or name is None:
            return  # Django ignores such parts too; their data goes nowhere
        self._name = name
        if "filename" not in params:
            self._fields += 1
            if _over(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS, self._fields):
                raise TooManyFieldsSent("too many fields")
            self._field_bytes += len(name) + 2  # as Django counts a field's name
            self._value = []
            return
        self._file_count += 1  # counted before the name is cleaned, as Django does
        if _over(settings.DATA_UPLOAD_MAX_NUMBER_FILES, self._file_count):
            raise TooManyFilesSent("too many files")
        filename = clean_file_name(params["filename"])
        if not filename:
            return
        if name in self.files:  # refused before a second file is written, not after
            count = len(self.files.getlist(name)) + 1
            raise InvalidInput(f"The request has {count} files in {name!r}; send one model file per upload.")
        content_type, extra = header_parameters(self._headers.get("content-type", ""), "a part's Content-Type")
        charset = extra.pop("charset", None)
        self._writer = _FileWriter(filename, content_type, charset, extra, settings.SLIPWAY_MAX_ARTIFACT_BYTES)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writer is not None:
            # A view, not a copy: the chunks read and the boundary bytes python-multipart passes are never changed.
            self._writer.write(memoryview(data)[start:end])
        elif self._value is not None:
            self._field_bytes += end - start
            if _over(settings.DATA_UPLOAD_MAX_MEMORY_SIZE, self._field_bytes):
                raise RequestDataTooBig("fields too large")
            self._value.append(data[start:end])

    def _part_end(self) -> None:
        if self._writer is not None:
            file = self._writer.complete()  # if the last writes fail, abort() still finds the writer
            self._writer = None
            self.files.appendlist(self._name, file)
        elif self._value is not None:
            self.data.appendlist(self._name, b"".join(self._value).decode(self.encoding, "replace"))
            self._value = None

    def _end(self) -> None:
        self.ended = True

    def abort(self) -> None:
        """Delete every file of a refused body: the one being written and those already complete."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for _, files in self.files.lists():
            for file in files:
                file.close()


def read_multipart(stream, meta, encoding: str) -> tuple[QueryDict, MultiValueDict]:
    """Parse the multipart/form-data body of the request with `meta`: (fields, files), each file streamed to disk.

    Refuses with 413 before reading when the Content-Length is over the artifact limit,
    and as soon as a file outgrows it; with 400 for a malformed or cut-off body; with 507
    when the disk fills up. Whatever goes wrong, the files written so far are deleted.
    """
    refuse_chunked(meta)
    limit = settings.SLIPWAY_MAX_ARTIFACT_BYTES
    length = meta.get("CONTENT_LENGTH") or "0"
    if length.isascii() and length.isdigit() and int(length) > limit + _MULTIPART_SLACK:
        raise too_large(limit)
    try:
        b"-".decode(encoding, "replace")  # (an empty bytes decodes without looking the codec up)
    except LookupError as exc:
        raise not_multipart(f"its charset {encoding!r} is not a text encoding; leave it out for UTF-8") from exc
    boundary = header_parameters(meta.get("CONTENT_TYPE", ""), "the Content-Type")[1].get("boundary", "")
    if not boundary:
        raise not_multipart("the Content-Type names no boundary")
    form = _Form(encoding)
    try:
        parser = MultipartParser(boundary.encode("latin-1"), form.callbacks())
    except (FormParserError, UnicodeEncodeError) as exc:
        raise not_multipart("the Content-Type's boundary is not usable") from exc
    try:
        for chunk in body_chunks(stream):
            parser.write(chunk)
        if not form.ended:
            raise UnreadablePostError("the body ended before its closing boundary")
    except UnreadablePostError as exc:
        form.abort()
        raise InvalidInput(
            "The upload ended before the whole body arrived (the connection closed early, or the "
            "body is shorter than its Content-Length). Nothing was kept: send it again."
        ) from exc
    except FormParserError as exc:
        form.abort()
        raise not_multipart(str(exc)) from exc
    except OSError as exc:  # reading errors arrive as UnreadablePostError: this is the temporary file's
        form.abort()
        if exc.errno in FULL:
            raise storage_full(exc, "SLIPWAY_UPLOAD_TEMP_DIR") from exc
        raise
    except BaseException:
        form.abort()
        raise
    return form.data, form.files


def refuse_chunked(meta) -> None:
    """WSGI servers hand Django no body for a chunked request: say so, not "no file" or "cut short"."""
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        raise LengthRequired(
            "Send the upload with a Content-Length header, not chunked: for example "
            "curl -H 'Authorization: Bearer <token>' -F artifact=@model.pt <url>."
        )


def body_chunks(stream) -> Iterator[bytes | bytearray]:
    """The body of the request `stream` (a Django request, or a file) in chunks of up to CHUNK bytes.

    Under gunicorn, for a body with a Content-Length, straight from the connection: each chunk
    is received into a buffer of its own (`recv_into`), 0.25 s of the request thread's CPU per
    GiB, where gunicorn's reader copies every byte three or four times between BytesIO buffers
    (0.45-0.95 s per GiB on the same machine; docs/benchmarks.md). Elsewhere (another WSGI
    server, a chunked body, Django's test client) through `stream.read`.
    """
    body = _gunicorn_body(stream)
    if body is None:
        while chunk := stream.read(CHUNK):
            yield chunk
        return
    stream._read_started = True  # as Django marks a request whose body has been read
    yield from _receive(stream.META["gunicorn.socket"], body)


def _gunicorn_body(request):
    """gunicorn's body of `request`, if it can be read from the socket instead: gunicorn serves it,
    with a Content-Length, and nothing of it has been read yet."""
    environ = getattr(request, "META", None)
    if environ is None or getattr(request, "_read_started", True) or "gunicorn.socket" not in environ:
        return None
    try:
        from gunicorn.http.body import Body, LengthReader
        from gunicorn.http.unreader import SocketUnreader
    except ImportError:
        return None
    body = environ.get("wsgi.input")
    reader = getattr(body, "reader", None)
    if (
        type(body) is not Body
        or type(reader) is not LengthReader
        or type(reader.unreader) is not SocketUnreader
        or not hasattr(reader.unreader, "take_buffered")
        or body.buf.tell()  # gunicorn holds part of the body already handed out
        or str(reader.length) != environ.get("CONTENT_LENGTH")
    ):
        return None
    return body


def _receive(sock, body) -> Iterator[bytes | bytearray]:
    """What is left of gunicorn's `body`: first what gunicorn read ahead with the headers, then the
    socket's. Its reader's `length` stays what the socket still holds, so that gunicorn, before the
    next request on the connection, skips just the rest of a body refused part-way; a body that
    cannot be read to its end is marked failed, as gunicorn marks its own, and the connection closes.
    """
    reader = body.reader
    held = reader.unreader.take_buffered()
    if len(held) > reader.length:  # the next request, sent before this one was answered
        reader.unreader.unread(held[reader.length :])
        held = held[: reader.length]
    if held:
        reader.length -= len(held)
        yield held
    idle = settings.SLIPWAY_UPLOAD_IDLE_TIMEOUT_S
    blocking = sock.gettimeout()
    # gthread's sockets block, and gunicorn's worker timeout does not reach a thread waiting in recv():
    # without this a client that stops sending would hold a thread and a temporary file for ever.
    sock.settimeout(idle)
    try:
        while reader.length:
            chunk = bytearray(min(CHUNK, reader.length))
            with memoryview(chunk) as view:
                filled = 0
                while filled < len(chunk):
                    received = sock.recv_into(view[filled:])
                    if not received:  # the client closed the connection: the body ends short
                        body.failed = True
                        return
                    filled += received
                    reader.length -= received
            yield chunk
    except TimeoutError:
        body.failed = True
        raise RequestTimeout(
            f"Nothing arrived for {idle:g} s in the middle of the upload (SLIPWAY_UPLOAD_IDLE_TIMEOUT_S). "
            "Nothing was kept: send it again."
        ) from None
    except OSError as exc:  # as Django's request.read() reports a connection that failed
        body.failed = True
        raise UnreadablePostError(*exc.args) from exc
    finally:
        sock.settimeout(blocking)


class StreamingMultiPartParser(BaseParser):
    """DRF's parser for multipart/form-data, on read_multipart instead of Django's parser."""

    media_type = "multipart/form-data"

    def parse(self, stream, media_type=None, parser_context=None):
        if stream is None:  # an empty body
            return DataAndFiles(QueryDict(), MultiValueDict())
        meta = {**parser_context["request"].META, "CONTENT_TYPE": media_type}
        return DataAndFiles(*read_multipart(stream, meta, parser_context.get("encoding") or settings.DEFAULT_CHARSET))


def read_browser_form(request) -> None:
    """Read a browser's multipart POST with read_multipart, before the CSRF middleware reads request.POST.

    Called by middleware, where a refusal raised would become a 500: it is kept for the
    view instead, which raises it with `raise_if_form_refused` (the body counts as empty).
    """
    encoding = request.encoding or settings.DEFAULT_CHARSET
    try:
        request.POST, request._files = read_multipart(request, request.META, encoding)
    except (ServiceError, RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent) as exc:
        request.form_refusal = as_service_error(exc)
        request.POST, request._files = QueryDict(), MultiValueDict()  # what Django's request.FILES reads


def raise_if_form_refused(request) -> None:
    refusal = getattr(request, "form_refusal", None)
    if refusal is not None:
        raise refusal
