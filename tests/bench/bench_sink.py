"""The reference the upload benchmark divides by: servers that read a body and discard it.

As a WSGI app (`gunicorn --pythonpath tests/bench bench_sink`), under the same
gunicorn settings as Slipway, it reads wsgi.input in the same 1 MiB steps as
Slipway's upload handler: what is left between it and Slipway is Django, the
multipart parser, hashing and the write to disk.

As a script (`python bench_sink.py PORT`), it is a raw socket reader with no HTTP
framework: recv_into one reused buffer until Content-Length bytes have come. It
shows what loopback and the client reach on this machine, gunicorn aside.
"""

from __future__ import annotations

import json
import socket
import sys

CHUNK = 1024 * 1024


def application(environ, start_response):
    read = environ["wsgi.input"].read
    received = 0
    while chunk := read(CHUNK):
        received += len(chunk)
    body = json.dumps({"received": received}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _serve_connection(conn: socket.socket, buffer: bytearray) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(65536)
        if not data:
            return
        head += data
    head, _, rest = head.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"expect", b"").lower() == b"100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    remaining = int(headers.get(b"content-length", b"0")) - len(rest)
    received = len(rest)
    view = memoryview(buffer)
    while remaining > 0:
        n = conn.recv_into(view, min(remaining, len(buffer)))
        if not n:
            return
        remaining -= n
        received += n
    body = json.dumps({"received": received}).encode()
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def serve_raw(port: int) -> None:
    buffer = bytearray(CHUNK)
    with socket.create_server(("127.0.0.1", port)) as server:
        while True:
            conn, _ = server.accept()
            with conn:
                _serve_connection(conn, buffer)


if __name__ == "__main__":
    serve_raw(int(sys.argv[1]))
