"""A slow network link in front of a real registry: a TCP relay that lets uploads through at a set rate.

The Docker engine pushes to whatever address the image's tag names; naming the relay's address
makes a push of a few hundred MB take long enough for a test to act while it is in progress.
Setting `stalled` makes it a registry that stops answering: it keeps the connections open and
forwards nothing either way.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class SlowLink:
    def __init__(self, upstream: str, bytes_per_s: int):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.bytes_per_s = bytes_per_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        self.stalled = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> SlowLink:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, self.bytes_per_s), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rate: int | None) -> None:
        chunk = 16384
        try:
            while not self._closed.is_set() and (data := src.recv(chunk)):
                while self.stalled.is_set() and not self._closed.wait(0.1):
                    pass
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
