"""``/healthz`` and ``/metrics`` on one port (``[schedule] listen``), a stdlib HTTP server in a thread.

``GET /healthz``: 200 when healthy, 503 when not; the body is JSON and says
why (:mod:`p88backup.schedule.health`). ``GET /metrics``: the process's
registry (:mod:`p88backup.metrics`) in Prometheus' text format. Anything
else: 404. Each request is answered from what is already known, so a probe
never waits on storage or PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from p88backup.errors import ConfigError
from p88backup.schedule.health import Assessment

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request (a stuck one holds only its thread)


def split_listen(listen: str) -> tuple[str, int]:
    """``"0.0.0.0:9188"`` -> ``("0.0.0.0", 9188)``; ``"[::]:9188"`` -> ``("::", 9188)``."""
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _handler(health: Callable[[], Assessment]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT
        server_version = "p88backup"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                result = health()
                self._send(200 if result.healthy else 503, "application/json", json.dumps(result.body).encode())
            elif path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                from p88backup import metrics

                self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry()))
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /healthz or /metrics\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes every few seconds would flood the log; failures show in /healthz's body.
            log.debug("http " + format % args)

    return Handler


class HealthServer:
    """The HTTP server; :meth:`start` binds (ConfigError when it cannot) and serves in a thread."""

    def __init__(self, listen: str, health: Callable[[], Assessment]) -> None:
        self.listen, self.health = listen, health
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        host, port = split_listen(self.listen)
        server_class = _Server
        if ":" in host:

            class _Server6(_Server):
                address_family = socket.AF_INET6

            server_class = _Server6
        try:
            self._server = server_class((host, port), _handler(self.health))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.listen} for /healthz and /metrics: {exc.strerror or exc}",
                hint="set schedule.listen (P88_SCHEDULE__LISTEN) to a free HOST:PORT",
            ) from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()
        log.info("serving /healthz and /metrics", extra={"p88": {"listen": self.listen}})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
