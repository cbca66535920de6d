"""Under gunicorn an upload's body is read from the connection itself (registry.uploads.body_chunks).

gunicorn's own request parser and WSGI environ, on one end of a socket pair, the client on
the other: the body arrives exact whether gunicorn read part of it ahead with the headers
or not, a request sent right behind it is still there for gunicorn to read next, and after
a refusal part-way gunicorn skips just the rest of the body.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from django.core.handlers.wsgi import WSGIRequest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import create

from controlplane.audit import Actor
from controlplane.errors import InvalidInput, PayloadTooLarge, RequestTimeout
from registry import services
from registry.uploads import CHUNK, _gunicorn_body, read_multipart
from tests.conftest import ROOT, _celery_env, free_port, wait_for
from tests.registry.test_multipart import BOUNDARY, body, left_in, part

NEXT_REQUEST = b"GET /next HTTP/1.1\r\nHost: slipway\r\n\r\n"
SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1024]}]}


@pytest.fixture
def temp_dir(settings, tmp_path):
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads")
    return tmp_path / "uploads"


@pytest.fixture
def connection():
    server, client = socket.socketpair()
    server.settimeout(10)  # a request lost on the way fails the test instead of hanging it
    yield server, client
    server.close()
    client.close()


def request_bytes(payload: bytes) -> bytes:
    return (
        "POST /api/v1/models/m/versions/ HTTP/1.1\r\nHost: slipway\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def send(client: socket.socket, data: bytes, *, then_close: bool = False) -> threading.Thread:
    def run():
        client.sendall(data)
        if then_close:
            client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=run, daemon=True)
    sender.start()
    return sender


def receive(server: socket.socket) -> tuple[RequestParser, WSGIRequest]:
    """What a gunicorn worker does with a connection before it calls the application."""
    cfg = Config()
    parser = RequestParser(cfg, server, ("127.0.0.1", 40000))
    req = next(parser)
    _, environ = create(req, server, ("127.0.0.1", 40000), ("127.0.0.1", 8000), cfg)
    return parser, WSGIRequest(environ)


@pytest.mark.parametrize("size", [100, 3 * CHUNK + 12_345], ids=["read-ahead-with-the-headers", "from-the-socket"])
def test_the_body_arrives_exact_and_the_request_sent_behind_it_stays_for_gunicorn(temp_dir, connection, size):
    server, client = connection
    content = os.urandom(size)
    sender = send(client, request_bytes(body(part("note", b"v1"), part("artifact", content, "m.pt"))) + NEXT_REQUEST)
    parser, request = receive(server)
    assert _gunicorn_body(request) is not None  # this request takes the socket path

    fields, files = read_multipart(request, request.META, "utf-8")

    sender.join()
    artifact = files["artifact"]
    assert (artifact.size, artifact.sha256) == (size, hashlib.sha256(content).hexdigest())
    assert artifact.read() == content
    assert fields["note"] == "v1"
    assert next(parser).path == "/next"


@pytest.mark.parametrize(
    ("how", "refusal", "says"),
    [
        ("closed", InvalidInput, "ended before the whole body arrived"),
        ("stalled", RequestTimeout, "Nothing arrived for 0.5 s in the middle of the upload"),
    ],
)
def test_a_body_cut_short_is_refused_leaves_no_file_and_closes_the_connection(
    temp_dir, connection, settings, how, refusal, says
):
    settings.SLIPWAY_UPLOAD_IDLE_TIMEOUT_S = 0.5
    server, client = connection
    whole = request_bytes(body(part("artifact", os.urandom(3 * CHUNK), "m.pt")))
    sender = send(client, whole[: 2 * CHUNK], then_close=how == "closed")  # "stalled": nothing more, still open
    parser, request = receive(server)
    server.settimeout(30)  # (only a safety net here: gthread's sockets block)
    started = time.monotonic()

    with pytest.raises(refusal, match=says):
        read_multipart(request, request.META, "utf-8")

    assert time.monotonic() - started < 10  # the idle timeout's doing, not the safety net's
    sender.join()
    assert left_in(temp_dir) == []
    assert server.gettimeout() == 30  # the socket's own timeout again, for gunicorn
    assert parser.finish_body() is False  # gunicorn closes the connection instead of reading on


def test_after_a_refusal_part_way_gunicorn_skips_just_the_rest_of_the_body(temp_dir, connection, settings):
    settings.SLIPWAY_MAX_ARTIFACT_BYTES = 2 * CHUNK  # the Content-Length passes; the file outgrows it on the way
    server, client = connection
    sender = send(client, request_bytes(body(part("artifact", os.urandom(2 * CHUNK + 100_000), "m.pt"))) + NEXT_REQUEST)
    parser, request = receive(server)

    with pytest.raises(PayloadTooLarge):
        read_multipart(request, request.META, "utf-8")

    assert next(parser).path == "/next"  # not the rest of the refused body taken for a request
    sender.join()
    assert left_in(temp_dir) == []


def test_a_body_gunicorn_has_started_handing_out_is_read_through_gunicorn(temp_dir, connection):
    server, client = connection
    content = os.urandom(CHUNK + 7)
    sender = send(client, request_bytes(body(part("artifact", content, "m.pt"))))
    _, request = receive(server)
    first = request.read(10)  # something read the start of the body already

    assert _gunicorn_body(request) is None
    rest = b"".join(iter(lambda: request.read(CHUNK), b""))
    sender.join()
    assert content in first + rest


@pytest.fixture
def gunicorn_url(live_db, tmp_path):
    """Slipway's web server as `make run` and production start it, on the test database."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "controlplane.wsgi"),
                *("--config", str(ROOT / "controlplane" / "gunicorn.conf.py")),
                *("--bind", f"127.0.0.1:{port}", "--workers", "1"),
            ],
            cwd=ROOT,
            env=_celery_env() | {"SLIPWAY_UPLOAD_IDLE_TIMEOUT_S": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url) or server.poll() is not None, timeout=60, what="gunicorn to answer")
    assert server.poll() is None, log.read_text()[-3000:]
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_uploads_through_gunicorn_on_one_connection_keep_every_byte(gunicorn_url, alice, alice_token, tmp_path):
    services.create_model("iris", "", actor=Actor(user=alice))
    path = tmp_path / "linear.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(1024, 768)), str(path))  # 3 MiB: several chunks
    content = path.read_bytes()
    ports = set()
    with httpx.Client(base_url=gunicorn_url, headers={"Authorization": f"Bearer {alice_token}"}, timeout=60) as client:
        for version in (1, 2):  # the second on the connection the first left
            answer = client.post(
                "/api/v1/models/iris/versions/",
                files={"artifact": ("mlp.pt", content)},
                data={"signature": json.dumps(SIGNATURE), "sha256": hashlib.sha256(content).hexdigest()},
            )
            assert answer.status_code == 201, answer.text
            assert (answer.json()["version"], answer.json()["size"]) == (version, len(content))
            ports.add(answer.extensions["network_stream"].get_extra_info("client_addr")[1])
        download = client.get("/api/v1/models/iris/versions/2/artifact/")
        ports.add(download.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert download.content == content
    assert len(ports) == 1  # one connection: each request found the next one where it should


def test_an_upload_that_stops_sending_is_answered_408_and_lets_go_of_its_thread(gunicorn_url, alice, alice_token):
    """gunicorn's worker timeout does not reach a thread blocked in recv(): the idle timeout (1 s here) does."""
    services.create_model("m", "", actor=Actor(user=alice))
    head = request_bytes(body(part("artifact", os.urandom(CHUNK), "m.pt"))).split(b"\r\n\r\n", 1)[0]
    head = head.replace(b"Host: slipway", f"Host: 127.0.0.1\r\nAuthorization: Bearer {alice_token}".encode())
    port = int(gunicorn_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
        stalled.sendall(head + b"\r\n\r\n" + b"--" + BOUNDARY.encode() + b"\r\n")  # and then nothing

        answer = b"".join(iter(lambda: stalled.recv(65536), b""))  # until the server closes the connection

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer[:500]
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["code"] == "timeout"
    auth = {"Authorization": f"Bearer {alice_token}"}
    versions = httpx.get(f"{gunicorn_url}/api/v1/models/m/versions/", headers=auth)
    assert versions.json()["count"] == 0  # nothing kept
