"""The multipart reader every upload goes through: exact bytes at any chunk edge, and nothing left on a refusal."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest
from django.core.exceptions import TooManyFieldsSent

from controlplane.errors import InvalidInput, PayloadTooLarge
from registry import uploads
from registry.uploads import (
    CHUNK,
    STALE_UPLOAD_S,
    BufferedWriter,
    ChunkSink,
    DirectWriter,
    HashedTemporaryUploadedFile,
    file_writer,
    read_multipart,
    sweep_stale_uploads,
)

BOUNDARY = "slipway-test-boundary-7e1f"
DELIMITER = f"\r\n--{BOUNDARY}".encode()


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename is not None:
        head += "Content-Type: application/octet-stream\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def meta(content: bytes, boundary: str = BOUNDARY) -> dict:
    return {"CONTENT_TYPE": f"multipart/form-data; boundary={boundary}", "CONTENT_LENGTH": str(len(content))}


@pytest.fixture
def temp_dir(settings, tmp_path):
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    return tmp_path / "uploads"


def left_in(directory) -> list[str]:
    return os.listdir(directory) if directory.exists() else []


def read(content: bytes, boundary: str = BOUNDARY):
    return read_multipart(io.BytesIO(content), meta(content, boundary), "utf-8")


FILE_HEAD = len(part("artifact", b"", filename="m.pt")) - 2  # the part's head, without its closing CRLF


@pytest.mark.parametrize("short_of_chunk", [0, 1, 2, 5, len(DELIMITER) - 1, len(DELIMITER), len(DELIMITER) + 1, -3])
def test_a_file_ending_at_any_offset_around_a_read_comes_back_exact(temp_dir, short_of_chunk):
    # The closing delimiter lands before, across and after the edge of the first 1 MiB read.
    size = CHUNK - FILE_HEAD - short_of_chunk
    data = (os.urandom(4096) * (size // 4096 + 1))[:size]
    _, files = read(body(part("artifact", data, filename="m.pt")))
    upload = files["artifact"]
    assert upload.read() == data
    assert (upload.size, upload.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    upload.close()
    assert left_in(temp_dir) == []


def test_bytes_that_almost_spell_the_boundary_stay_in_the_file(temp_dir):
    data = b"x" * (CHUNK - 7) + DELIMITER[:-1] + b"y" + DELIMITER[:-2] + b"\r\n--" + b"z" * 100
    fields, files = read(body(part("sha256", b"abc"), part("artifact", data, filename="m.pt")))
    assert files["artifact"].read() == data
    assert fields["sha256"] == "abc"


def test_fields_are_text_in_the_request_encoding_and_names_are_cleaned(temp_dir):
    content = body(
        part("metadata", '{"run": "café ✓"}'.encode()),
        part("artifact", b"weights", filename="../../etc/model\x07.pt"),
    )
    fields, files = read(content)
    assert fields["metadata"] == '{"run": "café ✓"}'
    assert files["artifact"].name == "model.pt"


def test_a_file_input_left_empty_is_skipped_like_django_does(temp_dir):
    fields, files = read(body(part("artifact", b"", filename=""), part("note", b"hi")))
    assert "artifact" not in files and fields["note"] == "hi"


@pytest.mark.parametrize(
    ("content", "boundary", "says"),
    [
        (b"this is not multipart at all", BOUNDARY, "not valid multipart"),
        (b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="a', BOUNDARY, "ended before"),
        (body(part("a", b"1")), "", "names no boundary"),
        (body(part("a", b"1")), "b" * 300, "boundary is not usable"),
        (
            body(
                b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="artifact"; '
                b"filename*=bogus''%41.pt\r\n\r\nw\r\n"
            ),
            BOUNDARY,
            "Content-Disposition cannot be read",
        ),
    ],
    ids=["garbage", "cut-in-headers", "no-boundary", "long-boundary", "unknown-rfc2231-charset"],
)
def test_a_malformed_body_is_refused_with_what_to_send(temp_dir, content, boundary, says):
    with pytest.raises(InvalidInput, match=says) as refused:
        read(content, boundary)
    assert "curl" in refused.value.message or "send it again" in refused.value.message
    assert left_in(temp_dir) == []


def test_a_body_cut_off_inside_the_file_deletes_what_was_written(temp_dir):
    content = body(part("artifact", os.urandom(3 * CHUNK), filename="m.pt"))
    with pytest.raises(InvalidInput, match="ended before the whole body arrived"):
        read(content[: 2 * CHUNK + 100])
    assert left_in(temp_dir) == []


def test_a_second_file_over_the_limit_deletes_the_first_one_too(temp_dir, settings):
    settings.SLIPWAY_MAX_ARTIFACT_BYTES = CHUNK
    content = body(part("first", b"small", filename="a.pt"), part("artifact", os.urandom(CHUNK + 1), filename="b.pt"))
    with pytest.raises(PayloadTooLarge, match="SLIPWAY_MAX_ARTIFACT_BYTES"):
        read(content)
    assert left_in(temp_dir) == []


def test_too_many_fields_stop_the_read(temp_dir, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 2
    with pytest.raises(TooManyFieldsSent):
        read(body(part("a", b"1"), part("b", b"2"), part("c", b"3"), part("artifact", b"w", filename="m.pt")))
    assert left_in(temp_dir) == []


# --- The writers behind it: past the page cache where the filesystem allows, plain writes where not ---


def sink_writers(path: Path):
    file = open(path, "w+b")  # noqa: SIM115 (closed by the test)
    return {
        "direct": lambda: DirectWriter(str(path), 64 * 1024),
        "buffered": lambda: BufferedWriter(file),
    }, file


@pytest.mark.parametrize("kind", ["direct", "buffered"])
@pytest.mark.parametrize("sizes", [[1], [4096], [65536, 1], [70000, 3, 65536 * 3 + 17], [0, 5000]], ids=str)
def test_both_writers_leave_exactly_the_bytes_sent(tmp_path, kind, sizes):
    writers, file = sink_writers(tmp_path / "upload")
    pieces = [os.urandom(n) for n in sizes]
    digest = hashlib.sha256()
    sink = ChunkSink(writers[kind](), digest, depth=2)
    for piece in pieces:
        sink.put(piece)
    sink.close()
    file.close()
    expected = b"".join(pieces)
    assert (tmp_path / "upload").read_bytes() == expected
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()


def test_the_direct_writer_is_used_where_the_filesystem_allows_it(temp_dir):
    upload = HashedTemporaryUploadedFile("m.pt", "application/octet-stream", None)
    writer = file_writer(upload)
    assert isinstance(writer, DirectWriter)  # the tests' temporary folder is on a disk filesystem
    writer.abort()
    upload.close()
    assert left_in(temp_dir) == []


def test_an_aborted_sink_leaves_no_descriptor_open(tmp_path):
    open_fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = open_fds()
    writers, file = sink_writers(tmp_path / "upload")
    sink = ChunkSink(writers["direct"](), hashlib.sha256(), depth=2)
    for _ in range(5):
        sink.put(os.urandom(100_000))
    sink.abort()
    file.close()
    assert open_fds() == before


def test_a_failing_write_surfaces_when_the_sink_closes_and_holds_nothing_open(tmp_path):
    (tmp_path / "upload").write_bytes(b"")
    open_fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = open_fds()
    read_only = open(tmp_path / "upload", "rb")  # noqa: SIM115 (closed below)
    sink = ChunkSink(BufferedWriter(read_only), hashlib.sha256(), depth=2)
    sink.put(b"weights")
    with pytest.raises(io.UnsupportedOperation):
        sink.close()
    sink.abort()  # what the reader does next: safe after a failed close
    read_only.close()
    assert open_fds() == before


def test_the_direct_writer_can_be_let_go_twice(tmp_path):
    (tmp_path / "upload").write_bytes(b"")
    writer = DirectWriter(str(tmp_path / "upload"), 64 * 1024)
    writer.write(b"x" * 5000)
    writer.close()
    writer.abort()
    assert (tmp_path / "upload").read_bytes() == b"x" * 5000


def test_a_request_charset_that_is_no_text_encoding_is_refused(temp_dir):
    content = body(part("a", b"1"))
    with pytest.raises(InvalidInput, match="'base64' is not a text encoding"):
        read_multipart(io.BytesIO(content), meta(content), "base64")


def test_a_content_length_that_is_no_number_is_left_to_the_stream(temp_dir):
    content = body(part("a", b"1"))
    fields, _ = read_multipart(io.BytesIO(content), {**meta(content), "CONTENT_LENGTH": "\xb2"}, "utf-8")
    assert fields["a"] == "1"


def test_temporary_files_a_dead_worker_left_are_deleted_when_an_upload_starts(temp_dir, monkeypatch):
    temp_dir.mkdir(parents=True, exist_ok=True)
    day_ago = time.time() - STALE_UPLOAD_S - 60
    stale, recent, other = temp_dir / "tmpdead1234.upload", temp_dir / "tmplive5678.upload", temp_dir / "notes.txt"
    for path in (stale, recent, other):
        path.write_bytes(b"partial")
    os.utime(stale, (day_ago, day_ago))
    os.utime(other, (day_ago, day_ago))
    monkeypatch.setattr(uploads, "_next_sweep", 0.0)  # this process has not looked yet

    _, files = read(body(part("artifact", b"model bytes", filename="m.pt")))

    assert not stale.exists()
    assert recent.exists() and other.exists()  # an upload still writing; not an upload's file
    assert files["artifact"].read() == b"model bytes"
    assert sweep_stale_uploads() == []  # once an hour per process, not at every upload
