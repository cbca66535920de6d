"""A stand-in for the Docker engine's socket, in front of the real engine.

It forwards every request to the engine as it is, and can cut a build's output short where a line
holds a marker: `end` finishes the response there as if the stream were complete (an engine that ends a
build without a word about its image), `drop` breaks the connection mid-stream (an engine that stops
answering: restarted, killed, out of memory). Closing its side makes the engine cancel the build, as
a real client going away would. It can also hold a build's output at a marker, or a request whose path
holds a marker (`/push`), until the test releases it: what another worker or the sweeper does meanwhile
then lands exactly between two steps. It can answer a request whose path holds a marker with an
error of the engine's own (`fail`), as the engine does when a call fails before it has written any
output. The Docker SDK talks to it through DOCKER_HOST, unchanged.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=600)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class DockerProxy:
    def __init__(self, upstream: str | None = None):
        self.upstream = upstream or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.cut: tuple[str, bytes] | None = None  # ("end" | "drop", marker) for /build responses
        self.cuts = 0
        self.fail: tuple[bytes, str] | None = None  # (path marker, the engine's error message): a 500 instead
        self.hold: bytes | None = None  # a build output line or a request path holding it waits for `release`
        self.held = threading.Event()
        self.release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self._server.server_address[1]}"

    def connection(self) -> http.client.HTTPConnection:
        if self.upstream.startswith("unix://"):
            return _UnixConnection(self.upstream.removeprefix("unix://"))
        address = urlsplit(self.upstream.replace("tcp://", "http://"))
        return http.client.HTTPConnection(address.hostname, address.port, timeout=600)

    def wait_for_release(self) -> None:
        self.hold = None  # once
        self.held.set()
        if not self.release.wait(timeout=300):
            raise TimeoutError("the test never released what the Docker proxy held")

    def __enter__(self) -> DockerProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        proxy: DockerProxy = self.server.proxy
        body = self._body()
        if proxy.fail and proxy.fail[0] in self.path.encode():
            answer = json.dumps({"message": proxy.fail[1]}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        if proxy.hold and proxy.hold in self.path.encode():
            proxy.wait_for_release()
        hop = {"transfer-encoding", "content-length", "connection"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
        upstream = proxy.connection()
        try:
            send = body if body or self.command != "GET" else None
            upstream.request(self.command, self.path, body=send, headers=headers)
            response = upstream.getresponse()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in hop:
                    self.send_header(key, value)
            if self.command == "HEAD" or response.status in (204, 304):
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            is_build = urlsplit(self.path).path.endswith("/build")
            while data := (response.readline() if is_build else response.read1(65536)):
                if is_build and proxy.hold and proxy.hold in data:
                    proxy.wait_for_release()
                if is_build and proxy.cut and proxy.cut[1] in data:
                    proxy.cuts += 1
                    if proxy.cut[0] == "drop":
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        finally:
            upstream.close()
