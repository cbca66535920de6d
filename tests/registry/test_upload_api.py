"""Uploading through the API: the contract, checksums, the size limit, hostile file names, downloads."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from django.conf import settings
from django.test import Client

from controlplane.audit import Actor
from controlplane.models import AuditEvent
from registry import services
from registry.downloads import byte_range
from registry.models import ModelVersion
from tests.conftest import wait_for
from tests.models_zoo import MLP_SIGNATURE

pytestmark = pytest.mark.django_db

SIGNATURE = json.dumps(MLP_SIGNATURE)
STORED_NAME = re.compile(r"^iris/[0-9a-f]{32}\.pt$")


@pytest.fixture
def iris(alice):
    return services.create_model("iris", "Classifies irises", actor=Actor(user=alice))


@pytest.fixture
def new_files():
    """Files that appeared in artifact storage or the upload temp dir during the test."""

    def snapshot() -> set[Path]:
        roots = (Path(settings.ARTIFACT_ROOT), Path(settings.FILE_UPLOAD_TEMP_DIR))
        return {path for root in roots for path in root.rglob("*") if path.is_file()}

    before = snapshot()
    return lambda: snapshot() - before


def upload(client, path: Path, model: str = "iris", **fields):
    with open(path, "rb") as fh:
        return client.post(f"/api/v1/models/{model}/versions/", {"artifact": fh, **fields}, format="multipart")


def multipart(disposition: str, content: bytes, **fields: str) -> tuple[bytes, str]:
    """A multipart body written by hand, so a hostile client's exact bytes reach the server."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    body += f'--{boundary}\r\nContent-Disposition: form-data; name="artifact"; {disposition}\r\n'.encode()
    body += b"Content-Type: application/octet-stream\r\n\r\n" + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def download(client, url: str, **headers) -> tuple[http.client.HTTPResponse, bytes]:
    response = client.get(url, **headers)
    content = b"".join(response.streaming_content) if response.streaming else response.content
    response.close()
    return response, content


# --- The contract --------------------------------------------------------------------------


def test_an_upload_answers_201_with_what_a_script_needs(api, iris, model_files, new_files):
    data = model_files["torchscript"].read_bytes()
    response = upload(api, model_files["torchscript"], signature=SIGNATURE, metadata='{"git_commit": "abc123"}')
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["version"] == 1
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size"] == len(data)
    assert body["format"] == "torchscript"
    assert body["status"] == "pending"
    assert body["metadata"] == {"git_commit": "abc123"}
    assert body["artifact_url"].endswith("/api/v1/models/iris/versions/1/artifact/")
    assert response["Location"] == "http://testserver/api/v1/models/iris/versions/1/"
    (stored,) = new_files()
    assert stored.read_bytes() == data
    assert upload(api, model_files["pt2"]).json()["version"] == 2


def test_a_matching_sha256_is_accepted_in_either_case(api, iris, model_files):
    digest = hashlib.sha256(model_files["pt2"].read_bytes()).hexdigest().upper()
    response = upload(api, model_files["pt2"], sha256=f" {digest} ")
    assert response.status_code == 201, response.json()


def test_a_sha256_mismatch_answers_400_and_keeps_nothing(api, iris, model_files, new_files):
    actual = hashlib.sha256(model_files["pt2"].read_bytes()).hexdigest()
    response = upload(api, model_files["pt2"], sha256="0" * 64)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert actual in body["error"] and "Upload it again" in body["error"]
    assert body["fields"] == {"sha256": ["does not match the uploaded file"]}
    assert not ModelVersion.objects.exists()
    assert new_files() == set()
    iris.refresh_from_db()
    assert iris.latest_version == 0


def test_a_sha256_that_is_not_a_hex_digest_says_what_to_send(api, iris, model_files, new_files):
    md5 = hashlib.md5(model_files["pt2"].read_bytes()).hexdigest()  # a common slip
    response = upload(api, model_files["pt2"], sha256=md5)
    assert response.status_code == 400
    assert "64 hexadecimal characters" in response.json()["error"]
    assert "sha256sum" in response.json()["error"]
    assert not ModelVersion.objects.exists() and new_files() == set()


def test_an_upload_without_a_file_says_which_field_to_use(api, iris):
    response = api.post("/api/v1/models/iris/versions/", {"signature": SIGNATURE}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"] == "Send the model file in the multipart field 'artifact'."


def test_a_json_body_is_refused_with_a_hint_to_send_multipart(api, iris):
    response = api.post("/api/v1/models/iris/versions/", {"artifact": "model.pt"}, format="json")
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["error"]
    assert "artifact=@" in response.json()["error"]


def test_a_torchscript_upload_without_a_signature_shows_an_example(api, iris, model_files, new_files):
    response = upload(api, model_files["torchscript"])
    assert response.status_code == 400
    assert '"shape": [-1, 4]' in response.json()["error"]
    assert new_files() == set()


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("signature", "{not json", "signature is not valid JSON"),
        ("signature", '{"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [4]}]}', "is not one of"),
        ("metadata", "[1, 2]", "metadata must be a JSON object"),
        # Python's json reads these; JSON has no such numbers and PostgreSQL would refuse them (a 500).
        ("metadata", '{"metrics": {"loss": NaN}}', "NaN is not a JSON number"),
        ("metadata", '{"metrics": {"loss": -Infinity}}', "-Infinity is not a JSON number"),
        ("metadata", '{"metrics": {"loss": 1e999}}', "1e999 is too large for a number"),
        ("signature", '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [NaN]}]}', "NaN is not a JSON number"),
        # Stored, these answered 500 then and on every later read: nothing can write a lone surrogate out,
        # and PostgreSQL's jsonb refuses NUL.
        ("metadata", '{"a": "\\ud800"}', "metadata.a contains a lone surrogate"),
        ("metadata", '{"a": [{"\\udfff": 1}]}', "a key in metadata.a[0] contains a lone surrogate"),
        ("metadata", '{"a": "x\\u0000y"}', "metadata.a contains a NUL character"),
        ("metadata", '{"\\u0000": 1}', "a key in metadata contains a NUL character"),
        ("signature", '{"inputs": [{"name": "\\ud800", "datatype": "FP32", "shape": [4]}]}', "lone surrogate"),
    ],
)
def test_bad_signatures_and_metadata_are_refused_with_what_to_fix(
    api, iris, model_files, new_files, field, value, hint
):
    response = upload(api, model_files["pt2"], **{field: value})
    assert response.status_code == 400
    assert hint in response.json()["error"]
    assert not ModelVersion.objects.exists() and new_files() == set()


@pytest.mark.parametrize("field", ["signature", "metadata"])
@pytest.mark.parametrize(
    "value",
    [
        "[" * 100_000 + "]" * 100_000,  # past Python's recursion limit: was a 500 (RecursionError)
        '{"a": ' * 65 + "1" + "}" * 65,  # readable, but each level widens the version page
    ],
    ids=["past-recursion-limit", "65-levels"],
)
def test_json_nested_too_deeply_is_refused(api, iris, model_files, new_files, field, value):
    response = upload(api, model_files["pt2"], **{field: value})
    assert response.status_code == 400
    assert response.json()["error"] == f"{field} is nested too deeply: at most 64 levels of objects and lists."
    assert not ModelVersion.objects.exists() and new_files() == set()


def test_a_signature_too_large_to_hand_to_the_runtime_is_refused_at_upload(api, iris, model_files, new_files):
    outputs = [{"name": f"class_probability_{i}", "datatype": "FP32", "shape": [-1, 1]} for i in range(2000)]
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": outputs}
    response = upload(api, model_files["pt2"], signature=json.dumps(signature))
    assert response.status_code == 400
    assert response.json()["error"] == (
        "signature is 130 KiB as JSON, more than the 96 KiB the runtime can be given. Declare the inputs only "
        "(validation records the outputs), and return fewer, larger tensors from the model if there are many."
    )
    assert not ModelVersion.objects.exists() and new_files() == set()


def test_metadata_may_nest_64_levels(api, iris, model_files):
    response = upload(api, model_files["pt2"], metadata='{"a": ' * 63 + "[1]" + "}" * 63)
    assert response.status_code == 201, response.json()


# --- The size limit -----------------------------------------------------------------------


def test_a_content_length_over_the_limit_is_refused_with_413(api, iris, settings, new_files, tmp_path):
    settings.SLIPWAY_MAX_ARTIFACT_BYTES = 1000
    big = tmp_path / "big.pt"
    big.write_bytes(b"\0" * (1024 * 1024))
    response = upload(api, big)
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == "too_large"
    assert "1000 bytes" in body["error"] and "SLIPWAY_MAX_ARTIFACT_BYTES" in body["error"]
    assert not ModelVersion.objects.exists() and new_files() == set()
    event = AuditEvent.objects.get(action="model_version.upload")
    assert event.outcome == "invalid" and "413" in event.message


def test_a_body_that_outgrows_the_limit_while_streaming_is_refused_with_413(
    api, iris, settings, new_files, tmp_path, model_files
):
    # Within the multipart slack, so only the streaming check can catch it.
    settings.SLIPWAY_MAX_ARTIFACT_BYTES = 100_000
    big = tmp_path / "big.pt"
    big.write_bytes(b"\0" * 150_000)
    response = upload(api, big)
    assert response.status_code == 413
    assert "100000 bytes" in response.json()["error"]
    assert not ModelVersion.objects.exists() and new_files() == set()


def test_a_file_of_exactly_the_limit_is_accepted(api, iris, settings, model_files):
    settings.SLIPWAY_MAX_ARTIFACT_BYTES = model_files["pt2"].stat().st_size
    assert upload(api, model_files["pt2"]).status_code == 201


def test_oversized_form_fields_are_refused_in_json(api, iris, model_files, new_files):
    with open(model_files["pt2"], "rb") as fh:
        response = api.post(
            "/api/v1/models/iris/versions/", {"artifact": fh, "metadata": "x" * 3_000_000}, format="multipart"
        )
    assert response.status_code == 413
    assert "keep metadata small" in response.json()["error"]
    assert not ModelVersion.objects.exists() and new_files() == set()
    assert AuditEvent.objects.get(action="model_version.upload").outcome == "invalid"


def test_a_malformed_body_answers_400_and_is_recorded(api, iris, new_files):
    body = b'--x\r\nContent-Disposition: form-data; name="artifact"; filename="m.pt"\r\n\r\nweights'
    response = api.generic(
        "POST", "/api/v1/models/iris/versions/", body, content_type="multipart/form-data; boundary=x"
    )
    assert response.status_code == 400
    assert "ended before the whole body arrived" in response.json()["error"]
    assert AuditEvent.objects.get(action="model_version.upload").outcome == "invalid"
    assert not ModelVersion.objects.exists() and new_files() == set()


def test_too_many_form_fields_are_refused_in_json(api, iris, settings, model_files, new_files):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 2
    body, content_type = multipart('filename="mlp.pt2"', model_files["pt2"].read_bytes(), a="1", b="2", c="3")
    response = api.generic("POST", "/api/v1/models/iris/versions/", body, content_type=content_type)
    assert response.status_code == 400
    assert "too many form fields" in response.json()["error"]
    assert not ModelVersion.objects.exists() and new_files() == set()


def test_a_file_sent_under_another_field_name_is_not_kept(api, iris, model_files, new_files):
    body, content_type = multipart('filename="mlp.pt2"', model_files["pt2"].read_bytes())
    body = body.replace(b'name="artifact"', b'name="model"')
    response = api.generic("POST", "/api/v1/models/iris/versions/", body, content_type=content_type)
    assert response.status_code == 400
    assert "multipart field 'artifact'" in response.json()["error"]
    assert not ModelVersion.objects.exists() and new_files() == set()


@pytest.mark.parametrize("field", ["sha256", "signature", "metadata"])
def test_a_file_sent_for_a_text_field_is_refused_with_how_to_send_its_text(
    api, iris, model_files, new_files, tmp_path, field
):
    """curl -F sha256=@model.sha256 sends a file, not its text: the sha256 was a 500 (a file has no
    .strip()), the others a refusal that did not say what was wrong."""
    text = tmp_path / f"{field}.txt"
    text.write_text(hashlib.sha256(model_files["torchscript"].read_bytes()).hexdigest() if field == "sha256" else "{}")
    with open(text, "rb") as fh:
        response = upload(api, model_files["torchscript"], **{"signature": SIGNATURE, field: fh})
    assert response.status_code == 400, response.content
    assert response.json()["error"].startswith(f"{field} is a text field, not a file")
    assert f"-F '{field}=<" in response.json()["error"]
    assert not ModelVersion.objects.exists() and new_files() == set()
    assert AuditEvent.objects.get(action="model_version.upload").outcome == "invalid"


# --- Over real HTTP (what the test client cannot show) -------------------------------------


@pytest.fixture
def server(live_server, live_db, alice_token, iris):
    parts = urlsplit(live_server.url)

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

    return connect


def test_the_server_answers_413_without_reading_a_huge_body(server, alice_token, settings, new_files):
    settings.SLIPWAY_MAX_ARTIFACT_BYTES = 1024 * 1024
    body, content_type = multipart('filename="huge.pt"', b"")
    conn = server()
    conn.putrequest("POST", "/api/v1/models/iris/versions/")
    conn.putheader("Authorization", f"Bearer {alice_token}")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(10 * 1024**3))  # 10 GiB announced...
    conn.endheaders()
    conn.send(body[:4096])  # ...4 KiB sent: an answer now proves the server did not wait for the rest
    response = conn.getresponse()
    assert response.status == 413
    assert "SLIPWAY_MAX_ARTIFACT_BYTES" in json.loads(response.read())["error"]
    conn.close()
    assert not ModelVersion.objects.exists() and new_files() == set()


def test_a_chunked_upload_is_refused_with_a_clear_411(server, alice_token, model_files, new_files):
    body, content_type = multipart('filename="mlp.pt2"', model_files["pt2"].read_bytes())
    conn = server()
    conn.putrequest("POST", "/api/v1/models/iris/versions/")
    conn.putheader("Authorization", f"Bearer {alice_token}")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for start in range(0, len(body), 4096):
        piece = body[start : start + 4096]
        conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 411
    assert "Content-Length" in json.loads(response.read())["error"]
    conn.close()
    assert not ModelVersion.objects.exists() and new_files() == set()


def test_an_upload_cut_off_midway_leaves_nothing_behind(server, alice_token, model_files, new_files):
    body, content_type = multipart('filename="mlp.pt"', model_files["torchscript"].read_bytes(), signature=SIGNATURE)
    conn = server()
    conn.putrequest("POST", "/api/v1/models/iris/versions/")
    conn.putheader("Authorization", f"Bearer {alice_token}")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[: len(body) // 2])
    conn.sock.shutdown(socket.SHUT_WR)  # the client goes away
    conn.getresponse().read()
    conn.close()
    refused = AuditEvent.objects.filter(action="model_version.upload", outcome="invalid")
    assert wait_for(refused.exists, timeout=10)
    assert not ModelVersion.objects.exists() and new_files() == set()


def test_an_upload_over_real_http_round_trips_the_exact_bytes(server, alice_token, model_files):
    data = model_files["pt2"].read_bytes()
    body, content_type = multipart('filename="mlp.pt2"', data)
    conn = server()
    headers = {"Authorization": f"Bearer {alice_token}", "Content-Type": content_type}
    conn.request("POST", "/api/v1/models/iris/versions/", body=body, headers=headers)
    created = conn.getresponse()
    assert created.status == 201, created.read()
    assert json.loads(created.read())["sha256"] == hashlib.sha256(data).hexdigest()
    conn.request("GET", "/api/v1/models/iris/versions/1/artifact/", headers={"Authorization": headers["Authorization"]})
    fetched = conn.getresponse()
    assert fetched.status == 200
    assert fetched.read() == data
    # Cut off after 1,000 bytes, the download resumes where it stopped, on the same connection.
    conn.request(
        "GET",
        "/api/v1/models/iris/versions/1/artifact/",
        headers={"Authorization": headers["Authorization"], "Range": "bytes=1000-"},
    )
    rest = conn.getresponse()
    assert rest.status == 206
    assert data[:1000] + rest.read() == data
    conn.close()


# --- Unicode and hostile file names ---------------------------------------------------------

HOSTILE_NAMES = [
    # (how the client names the file, the name Slipway shows)
    ('filename="../../etc/passwd"', "passwd"),
    ("filename*=UTF-8''..%2F..%2Fetc%2Fpasswd", "passwd"),
    ('filename="C:\\Users\\me\\model.pt"', "model.pt"),
    ("filename*=UTF-8''" + quote("модель 🚀.pt"), "модель 🚀.pt"),
    ('filename="модель 🚀.pt"', "модель 🚀.pt"),
    ("filename*=UTF-8''" + quote('my "best" model.pt'), "my best model.pt"),
    ("filename*=UTF-8''" + quote("evil\r\nSet-Cookie: x=1.pt"), "evilSet-Cookie: x=1.pt"),
    ("filename*=UTF-8''" + quote("nul\x00bell\x07esc\x1b[31m.pt"), "nulbellesc[31m.pt"),
    ("filename*=UTF-8''" + quote("rtl\u202egnp.pt"), "rtlgnp.pt"),
    ("filename*=UTF-8''" + quote("<b>bold</b>.pt"), "b.pt"),
    ("filename*=UTF-8''" + quote("<img src=x onerror=alert(1)>.pt"), "img src=x onerror=alert(1).pt"),
    ('filename="' + "a" * 900 + '.pt"', "a" * 197 + ".pt"),
]


@pytest.mark.parametrize(("disposition", "shown"), HOSTILE_NAMES, ids=[shown[:30] for _, shown in HOSTILE_NAMES])
def test_hostile_file_names_are_stored_under_our_own_name_and_shown_cleaned(
    api, iris, model_files, new_files, disposition, shown
):
    data = model_files["torchscript"].read_bytes()
    body, content_type = multipart(disposition, data, signature=SIGNATURE)
    response = api.generic("POST", "/api/v1/models/iris/versions/", body, content_type=content_type)
    assert response.status_code == 201, response.json()
    assert response.json()["filename"] == shown

    version = ModelVersion.objects.get()
    assert STORED_NAME.match(version.artifact.name), version.artifact.name
    (stored,) = new_files()
    assert stored == Path(settings.ARTIFACT_ROOT) / version.artifact.name

    fetched, content = download(api, "/api/v1/models/iris/versions/1/artifact/")
    assert fetched.status_code == 200
    assert content == data
    assert fetched["X-Checksum-SHA256"] == hashlib.sha256(data).hexdigest()
    disposition_header = fetched["Content-Disposition"]
    assert disposition_header.startswith("attachment; filename")
    assert all(ch.isprintable() and ord(ch) < 128 for ch in disposition_header)
    assert disposition_header.count('"') in (0, 2)


def test_the_version_page_shows_the_cleaned_name(api, client, alice, iris, model_files):
    hostile = '<img src=x onerror=alert(1)>\r\n"модель 🚀".pt'
    body, content_type = multipart("filename*=UTF-8''" + quote(hostile), model_files["pt2"].read_bytes())
    api.generic("POST", "/api/v1/models/iris/versions/", body, content_type=content_type)
    client.force_login(alice)
    page = client.get("/models/iris/versions/1/").content.decode()
    assert "img src=x onerror=alert(1)модель 🚀.pt" in page
    assert "<img" not in page and "\r" not in page


def test_the_download_names_a_unicode_file_in_rfc_6266_form(api, iris, model_files):
    body, content_type = multipart(
        'filename="модель 🚀.pt"', model_files["torchscript"].read_bytes(), signature=SIGNATURE
    )
    api.generic("POST", "/api/v1/models/iris/versions/", body, content_type=content_type)
    fetched, _ = download(api, "/api/v1/models/iris/versions/1/artifact/")
    assert fetched["Content-Disposition"] == "attachment; filename*=utf-8''" + quote("модель 🚀.pt")


def test_head_on_an_artifact_answers_its_headers_without_reading_it(api, iris, model_files):
    body, content_type = multipart(
        'filename="модель 🚀.pt"', model_files["torchscript"].read_bytes(), signature=SIGNATURE
    )
    api.generic("POST", "/api/v1/models/iris/versions/", body, content_type=content_type)
    url = "/api/v1/models/iris/versions/1/artifact/"
    head = api.head(url)
    fetched, _ = download(api, url)  # (closing a download ends the test's database connection: last)
    assert head.status_code == 200
    assert not head.streaming, "a HEAD must not open the file (a server would read it all to discard it)"
    for header in ("Content-Length", "Content-Disposition", "Content-Type", "X-Checksum-SHA256"):
        assert head[header] == fetched[header], header
    assert int(head["Content-Length"]) == len(model_files["torchscript"].read_bytes())


@pytest.fixture
def uploaded(api, iris, model_files) -> bytes:
    data = model_files["torchscript"].read_bytes()
    assert upload(api, model_files["torchscript"], signature=SIGNATURE).status_code == 201
    return data


ARTIFACT = "/api/v1/models/iris/versions/1/artifact/"


@pytest.mark.parametrize(
    ("header", "wanted"),
    [("bytes=10-19", slice(10, 20)), ("bytes=100-", slice(100, None)), ("bytes=-7", slice(-7, None))],
)
def test_a_download_resumes_from_a_byte_range(api, uploaded, header, wanted):
    """What `curl -C -` and `wget -c` send: the rest of the file, not all of it again."""
    response, content = download(api, ARTIFACT, HTTP_RANGE=header)
    part = uploaded[wanted]
    assert response.status_code == 206
    assert content == part
    assert response["Content-Length"] == str(len(part))
    first = wanted.start if wanted.start >= 0 else len(uploaded) + wanted.start
    assert response["Content-Range"] == f"bytes {first}-{first + len(part) - 1}/{len(uploaded)}"


def test_a_range_past_the_end_is_416_and_odd_ones_get_the_whole_file(api, uploaded):
    size = len(uploaded)
    past = api.get(ARTIFACT, HTTP_RANGE=f"bytes={size}-")
    assert past.status_code == 416 and past["Content-Range"] == f"bytes */{size}"
    for header in ("bytes=0-1,5-6", "lines=1-2", "bytes=9-3", "bytes=" + "9" * 5000 + "-"):
        response = api.get(ARTIFACT, HTTP_RANGE=header)  # (closing a response ends the test's connection)
        assert response.status_code == 200 and response["Content-Length"] == str(size), header


def test_the_range_unit_is_case_insensitive(api, uploaded):
    response, content = download(api, ARTIFACT, HTTP_RANGE="Bytes=0-9")
    assert response.status_code == 206 and content == uploaded[:10]


def test_an_empty_artifact_has_no_byte_to_send_and_the_pages_download_answers_head(iris, alice):
    assert byte_range("bytes=-5", 0) == "unsatisfiable"
    assert byte_range("bytes=0-", 0) == "unsatisfiable"
    assert byte_range("bytes=0-", 10) == (0, 9)
    browser = Client()
    browser.force_login(alice)
    assert browser.head("/models/iris/versions/99/download/").status_code == 404  # HEAD is allowed there too


def test_a_range_for_other_bytes_than_the_clients_gets_the_whole_file(api, uploaded):
    stale = api.get(ARTIFACT, HTTP_RANGE="bytes=5-", HTTP_IF_RANGE='"0000"')
    assert stale.status_code == 200 and stale["Content-Length"] == str(len(uploaded))
    digest = hashlib.sha256(uploaded).hexdigest()
    response, content = download(api, ARTIFACT, HTTP_RANGE="bytes=5-", HTTP_IF_RANGE=f'"{digest}"')
    assert response.status_code == 206 and content == uploaded[5:]
    assert response["ETag"] == f'"{digest}"' and response["Accept-Ranges"] == "bytes"


def test_a_client_holding_the_file_is_told_304_and_one_expecting_other_bytes_412(api, uploaded, alice):
    etag = f'"{hashlib.sha256(uploaded).hexdigest()}"'
    browser = Client()
    browser.force_login(alice)
    for client, url in ((api, ARTIFACT), (browser, "/models/iris/versions/1/download/")):
        held = client.get(url, HTTP_IF_NONE_MATCH=f'"0000", {etag}')
        assert held.status_code == 304 and held.content == b"" and held["ETag"] == etag
        assert client.head(url, HTTP_IF_NONE_MATCH=etag).status_code == 304
        changed = client.get(url, HTTP_IF_MATCH='"0000"')
        assert changed.status_code == 412 and changed.content == b""
    response, content = download(api, ARTIFACT, HTTP_IF_NONE_MATCH='"0000"', HTTP_IF_MATCH=etag)
    assert response.status_code == 200 and content == uploaded


def test_two_files_in_artifact_are_refused_and_neither_is_kept(api, iris, model_files, new_files):
    data = model_files["torchscript"].read_bytes()
    boundary = "b0undary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="artifact"; filename="m.pt"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = part + data + b"\r\n" + part + data + f"\r\n--{boundary}--\r\n".encode()
    response = api.generic(
        "POST", "/api/v1/models/iris/versions/", body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert response.status_code == 400
    assert "2 files in 'artifact'" in response.json()["error"]
    assert not ModelVersion.objects.exists()
    assert not new_files()


def test_the_download_also_answers_clients_that_accept_only_octet_stream(api, iris, model_files):
    data = model_files["pt2"].read_bytes()
    upload(api, model_files["pt2"])
    fetched, content = download(api, "/api/v1/models/iris/versions/1/artifact/", HTTP_ACCEPT="application/octet-stream")
    assert fetched.status_code == 200
    assert content == data


def test_the_browser_download_returns_the_exact_bytes(client, alice, api, iris, model_files):
    data = model_files["pt2"].read_bytes()
    upload(api, model_files["pt2"])
    client.force_login(alice)
    fetched, content = download(client, "/models/iris/versions/1/download/")
    assert fetched.status_code == 200 and content == data
    assert fetched["Content-Disposition"] == 'attachment; filename="mlp.pt2"'


# --- Lookups and filters -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("/api/v1/models/nope/", "No model named 'nope'"),
        ("/api/v1/models/nope/versions/", "No model named 'nope'"),
        ("/api/v1/models/iris/versions/7/", "iris has no version 7"),
        ("/api/v1/models/iris/versions/7/artifact/", "iris has no version 7"),
    ],
)
def test_unknown_models_and_versions_answer_a_404_that_names_them(api, iris, url, named):
    response = api.get(url)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert named in response.json()["error"]


def test_uploading_to_an_unknown_model_says_to_create_it_first(api, model_files):
    response = upload(api, model_files["pt2"], model="nope")
    assert response.status_code == 404
    assert "POST /api/v1/models/" in response.json()["error"]


def test_versions_can_be_filtered_by_status(api, iris, model_files):
    for _ in range(3):
        upload(api, model_files["pt2"])
    ModelVersion.objects.filter(version=2).update(status="ready")
    ready = api.get("/api/v1/models/iris/versions/?status=ready").json()
    assert [v["version"] for v in ready["results"]] == [2]
    pending = api.get("/api/v1/models/iris/versions/?status=pending").json()
    assert [v["version"] for v in pending["results"]] == [3, 1]


def test_an_unknown_status_filter_lists_the_valid_ones(api, iris):
    response = api.get("/api/v1/models/iris/versions/?status=done")
    assert response.status_code == 400
    assert "status" in response.json()["error"]
    assert "ready" in response.json()["error"]


def test_models_can_be_searched_by_name_or_description(api, alice):
    services.create_model("fraud-detector", "Flags card payments", actor=Actor(user=alice))
    services.create_model("churn", "Who leaves next month", actor=Actor(user=alice))
    names = lambda q: [m["name"] for m in api.get(f"/api/v1/models/?search={q}").json()["results"]]  # noqa: E731
    assert names("fraud") == ["fraud-detector"]
    assert names("MONTH") == ["churn"]


def test_the_models_page_search_with_a_nul_finds_nothing_instead_of_failing(client, alice, iris):
    """The API's search refuses a NUL (its filter form does); the page's went to PostgreSQL, a 500."""
    client.force_login(alice)
    response = client.get("/models/?q=ir%00is")
    assert response.status_code == 200
    assert [model.name for model in response.context["page"].object_list] == []
    assert response.context["q"] == "ir\ufffdis"


@pytest.mark.parametrize(
    ("payload", "status", "hint"),
    [
        ({"name": "Bad Name!"}, 400, "lowercase letters, digits and hyphens"),
        ({}, 400, "name"),
        ({"name": "iris"}, 409, "already exists"),
    ],
)
def test_creating_a_model_with_bad_input_says_what_to_fix(api, iris, payload, status, hint):
    response = api.post("/api/v1/models/", payload, format="json")
    assert response.status_code == status
    assert hint in response.json()["error"]


def test_a_json_body_nested_too_deeply_answers_400(api):
    response = api.post("/api/v1/models/", "[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {
        "error": "JSON parse error - nested too deeply; flatten the body.",
        "code": "parse_error",
    }


def test_creating_a_model_answers_201_with_its_location(api):
    response = api.post("/api/v1/models/", {"name": "churn", "description": "Who leaves"}, format="json")
    assert response.status_code == 201
    assert response["Location"] == "http://testserver/api/v1/models/churn/"
    assert api.get(response["Location"]).json()["description"] == "Who leaves"


def test_a_url_without_its_trailing_slash_is_served_not_redirected(api, iris, model_files):
    # A 301 would turn a script's POST into a GET that "succeeds" with a list.
    assert api.post("/api/v1/models", {"name": "churn"}, format="json").status_code == 201
    with open(model_files["pt2"], "rb") as fh:
        created = api.post("/api/v1/models/iris/versions", {"artifact": fh}, format="multipart")
    assert created.status_code == 201
    assert api.get("/api/v1/models/iris/versions/1").json()["version"] == 1
    fetched, content = download(api, "/api/v1/models/iris/versions/1/artifact")
    assert fetched.status_code == 200 and content == model_files["pt2"].read_bytes()


def test_a_model_answers_with_its_fields(api, iris):
    body = api.get("/api/v1/models/iris/").json()
    assert body["name"] == "iris" and body["description"] == "Classifies irises"
    assert body["created_by"] == "alice" and body["latest_version"] is None


def test_the_api_root_links_to_the_api_lists(api):
    links = api.get("/api/v1/").json()
    assert set(links) >= {"models", "audit", "tokens"}
    for url in links.values():
        assert url.startswith("http://testserver/api/v1/")
        assert "results" in api.get(url).json()


@pytest.mark.parametrize(
    "method, body, content_type, status, says",
    [
        (
            "post",
            '{"name": ',
            "application/json",
            400,
            "JSON parse error - Expecting value: line 1 column 10 (char 9). The body must be one valid JSON object",
        ),
        (
            "post",
            "name=iris",
            "text/plain",
            415,
            "A 'text/plain' body is not accepted here: send application/json, multipart/form-data",
        ),
        ("put", "{}", "application/json", 405, "PUT is not allowed on this URL; it takes GET, POST (see /api/docs/)."),
    ],
)
def test_a_body_or_method_the_api_does_not_take_is_answered_with_what_it_takes(
    api, method, body, content_type, status, says
):
    response = getattr(api, method)("/api/v1/models/", body, content_type=content_type)
    assert response.status_code == status
    assert says in response.json()["error"]
