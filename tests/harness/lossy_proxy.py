"""A TCP proxy in front of a real S3 server that loses the response to chosen requests.

The request reaches the server whole and the server acts on it; only its
answer never reaches the client, which sees the connection close (as after
a network cut or a load balancer timeout) and retries. That is the one fault
a create-only PUT cannot tell apart from "someone else stored this key".

Bytes are forwarded untouched in both directions; the proxy only looks at
the first line of each request (HTTP/1.1 without pipelining: a client sends
its next request on a connection only after the previous answer). An
interim ``100 Continue`` is passed through so a client that waits for it
sends its body; the final answer is dropped and both sockets are closed.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ")


class LossyProxy:
    """``drop(request_line)`` decides which answers are lost, at most ``times`` of them.

    ``endpoint`` is the URL to give clients; ``lost`` lists the request lines
    whose answers were dropped.
    """

    def __init__(self, upstream: str, drop: Callable[[str], bool], times: int = 1) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._drop, self._left = drop, times
        self._lock = threading.Lock()
        self.lost: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: set[socket.socket] = set()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="lossy-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            conn = _Connection(self, client, server)
            threading.Thread(target=conn.requests, daemon=True).start()
            threading.Thread(target=conn.responses, daemon=True).start()

    def _claim(self, request_line: str) -> bool:
        """Whether this request's answer is to be lost (counts it if so)."""
        with self._lock:
            if self._left <= 0 or not self._drop(request_line):
                return False
            self._left -= 1
            self.lost.append(request_line)
            return True

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            for s in socks:
                self._open.discard(s)
                try:
                    # shutdown, not only close: another thread may be blocked in recv on it,
                    # and close alone would neither wake it nor end the connection.
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            socks = list(self._open)
        self._forget(*socks)

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Connection:
    def __init__(self, proxy: LossyProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy, self.client, self.server = proxy, client, server
        self.drop_next_answer = threading.Event()

    def requests(self) -> None:
        try:
            while data := self.client.recv(65536):
                if data.startswith(_METHODS):
                    line = data.split(b"\r\n", 1)[0].decode("latin-1")
                    if self.proxy._claim(line):
                        # Set before the request goes on: its answer cannot come earlier.
                        self.drop_next_answer.set()
                self.server.sendall(data)
        except OSError:
            pass
        self.proxy._forget(self.client, self.server)

    def responses(self) -> None:
        try:
            while data := self.server.recv(65536):
                if self.drop_next_answer.is_set():
                    if data.startswith(b"HTTP/1.1 100"):
                        head, _, rest = data.partition(b"\r\n\r\n")
                        self.client.sendall(head + b"\r\n\r\n")
                        if not rest:
                            continue
                    break  # the final answer: lose it
                self.client.sendall(data)
        except OSError:
            pass
        self.proxy._forget(self.client, self.server)
