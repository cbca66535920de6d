"""Large JSON bodies and answers are decoded and encoded off the event loop: health checks and other clients'
requests are answered meanwhile."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import termios
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from inference_runtime import codec
from inference_runtime.offload import DECODE_INLINE_BYTES

pytestmark = pytest.mark.runtime

ROWS = 2_500_000  # as nested [[x], [x], ...]: about 50 MiB of JSON, which takes seconds to decode


def big_request(rows: int = ROWS) -> tuple[np.ndarray, bytes]:
    values = np.random.default_rng(7).random((rows, 1))
    request = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [rows, 1], "data": values}]}
    return values, orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY)


def post_raw(port: int, body: bytes) -> socket.socket:
    """Send an infer request whole (sendall returns once the last byte is handed to the kernel); read its answer
    with read_answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    head = "POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    return sock


def unacknowledged(sock: socket.socket) -> int:
    """Bytes sent on `sock` that the other end's kernel has not yet acknowledged (Linux's SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    sock.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
def echo(spawn, zoo):
    return spawn("echo", zoo["echo"].path, "--request-timeout-s", "120").wait_ready()


def test_health_checks_and_small_requests_are_answered_while_a_large_body_decodes(echo):
    """Decoded on the event loop, the body held up every other request for seconds: a Kubernetes liveness probe
    (its timeout is 1 s by default) failed, and the kubelet restarted a healthy server."""
    values, body = big_request()
    small = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    for _ in range(2):  # the first large body also starts the decoder process
        sock = post_raw(echo.port, body)
        big: dict = {}
        reader = threading.Thread(target=lambda: big.update(answer=read_answer(sock), at=time.monotonic()))
        reader.start()
        while unacknowledged(sock):  # the server's kernel has every byte
            time.sleep(0.01)
        time.sleep(0.2)  # and the server has read them: it decodes
        with httpx.Client(base_url=echo.url, timeout=1) as other:
            try:
                assert other.get("/v2/health/live").status_code == 200
                assert other.get("/v2/health/ready").status_code == 200
            except httpx.TimeoutException:
                pytest.fail("a health check had no answer within 1 s while a large body was decoded")
            answer = other.post("/v2/models/echo/infer", content=orjson.dumps(small), timeout=60)
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"][0]["data"] == [1, 2, 3, 4]
            small_answered = time.monotonic()
        reader.join()
        assert small_answered < big["at"]
        status, payload = big["answer"]
        assert status == 200, payload[:500]
        output = orjson.loads(payload)["outputs"][0]
        assert output["shape"] == [ROWS, 1]
        assert np.array_equal(np.array(output["data"]), values.reshape(-1))


def test_a_large_bad_body_gets_the_same_400_as_a_small_one(echo):
    pad = b" " * (DECODE_INLINE_BYTES + 1)  # JSON whitespace: decoded by the decoder process
    for bad, error in (
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": ["a", "b"]}]}', "holds strings"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2]}]}', "its data holds 2"),
        (b'{"inputs": [{"name": "x", "datatype": "TEXT", "shape": [1], "data": [1]}]}', "unknown datatype"),
    ):
        answers = [echo.client.post("/v2/models/echo/infer", content=body) for body in (bad, bad[:-1] + pad + b"}")]
        assert [answer.status_code for answer in answers] == [400, 400]
        assert answers[0].json() == answers[1].json() and error in answers[0].json()["error"]


def decoders(pid: int) -> list[int]:
    """The server's child processes that run multiprocessing's workers (its resource tracker is another)."""
    tasks = Path(f"/proc/{pid}/task")
    found = [int(child) for task in tasks.iterdir() for child in (task / "children").read_text().split()]
    return [child for child in found if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def test_a_decoder_process_that_dies_fails_its_request_and_the_next_large_body_gets_a_new_one(echo):
    _, body = big_request(300_000)
    assert echo.client.post("/v2/models/echo/infer", content=body).status_code == 200
    (decoder,) = decoders(echo.proc.pid)
    _, slow = big_request()
    sock = post_raw(echo.port, slow)
    while unacknowledged(sock):
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(decoder, signal.SIGKILL)  # as the kernel's OOM killer would
    status, payload = read_answer(sock)
    assert status == 500
    assert "the process decoding large requests stopped" in orjson.loads(payload)["error"]
    assert echo.client.post("/v2/models/echo/infer", content=body).status_code == 200
    assert len(decoders(echo.proc.pid)) == 1 and decoder not in decoders(echo.proc.pid)


def test_a_large_json_output_is_written_in_pieces_to_the_same_bytes():
    rng = np.random.default_rng(5)
    for size in (0, 5, codec.ENCODE_INLINE_VALUES, codec.ENCODE_INLINE_VALUES + 1, 3 * codec.ENCODE_INLINE_VALUES):
        finite = rng.random(size).astype(np.float32)
        nonfinite = finite.copy()
        nonfinite[size // 2 :: 50_000] = np.nan
        nonfinite[-3:] = [np.nan, np.inf, -np.inf][: min(size, 3)]
        for flat in (finite, nonfinite, np.arange(size, dtype=np.int64)):
            one_call = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)
            whole = one_call if np.isfinite(flat).all() else codec._with_nonfinite(flat)
            written = orjson.dumps(codec._json_data(flat), option=orjson.OPT_SERIALIZE_NUMPY)
            assert written == whole, (size, flat.dtype)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_decoder_process_goes_with_the_server(echo, sig):
    """Stopped (SIGTERM: drained) or killed, the server leaves no process behind."""
    _, body = big_request(300_000)
    assert echo.client.post("/v2/models/echo/infer", content=body).status_code == 200
    (decoder,) = decoders(echo.proc.pid)
    assert "libtorch" not in Path(f"/proc/{decoder}/maps").read_text()  # numpy and orjson: 30 MB, not 180
    echo.proc.send_signal(sig)
    echo.wait_exit()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{decoder}").exists() and b"spawn_main" in Path(f"/proc/{decoder}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the decoder process outlived the server"
        time.sleep(0.05)
