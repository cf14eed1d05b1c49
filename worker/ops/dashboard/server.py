"""``eventworker dashboard``: the status page over HTTP, from the standard library's server.

Read-only: ``GET /`` is the page (:mod:`worker.ops.dashboard.page`), ``GET /status.json`` the
same data as ``eventworker status --json``; anything else is 404, any other method 405.
Requests are served by threads (``ThreadingHTTPServer``); they share one event loop in a
thread of its own, where one :class:`~worker.ops.status.StatusReader` keeps an engine and a
Redis pool, so a reload costs a few queries and no new connections. A status younger than
:data:`CACHE_S` is served again, so many open tabs do not multiply the queries.

:meth:`DashboardServer.serve_until_stopped` serves until SIGINT or SIGTERM (what ``docker stop`` and
systemd send) and ends either way as a stop asked for, so the command exits 0 as a worker does.

Every response forbids scripts, frames and fetches
(:func:`worker.ops.dashboard.page.content_security_policy`); the page itself escapes everything it shows.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Final

from worker.config import Settings
from worker.logging import get_logger
from worker.ops import status_text as statusfmt
from worker.ops.dashboard.page import content_security_policy, render_page
from worker.ops.status import Status, StatusReader

#: Seconds a gathered status is served again before it is read anew.
CACHE_S: Final = 1.0
#: Longest a request waits for a status.
READ_TIMEOUT_S: Final = 60.0

log = get_logger("eventworker.dashboard")

#: The signals that stop the dashboard cleanly: Ctrl-C, and a supervisor's stop.
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


class _Stop(Exception):
    """Raised in the serving thread by a stop signal's handler, to leave ``serve_forever``."""


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "eventworker-dashboard"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, *, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path not in {"/", "/index.html", "/status.json"}:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", send_body)
            return
        try:
            status = self.server.status()
        except Exception as exc:
            log.error("dashboard.status_failed", error=type(exc).__name__)
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"status unavailable\n", "text/plain", send_body)
            return
        if path == "/status.json":
            self._send(HTTPStatus.OK, statusfmt.dumps(status), "application/json", send_body)
            return
        nonce = secrets.token_urlsafe(16)
        page = render_page(status, refresh_s=self.server.refresh_s, nonce=nonce).encode()
        self._send(HTTPStatus.OK, page, "text/html; charset=utf-8", send_body, nonce)

    def _send(
        self, code: HTTPStatus, body: bytes, content_type: str, send_body: bool, nonce: str = "none"
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", content_security_policy(nonce))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard.request", line=format % args)


class DashboardServer(ThreadingHTTPServer):
    """The dashboard's HTTP server, with the status reader's event loop beside it."""

    daemon_threads = True

    def __init__(self, settings: Settings, host: str, port: int, refresh_s: int) -> None:
        super().__init__((host, port), _Handler)
        self.refresh_s = refresh_s
        self._reader = StatusReader(settings)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="dashboard-loop", daemon=True
        )
        self._loop_thread.start()
        self._lock = threading.Lock()
        self._cached: tuple[float, Status] | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def status(self) -> Status:
        """The current status, read at most once per :data:`CACHE_S`."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < CACHE_S:
                return self._cached[1]
            future = asyncio.run_coroutine_threadsafe(self._reader.read(), self._loop)
            status = future.result(timeout=READ_TIMEOUT_S)
            self._cached = (time.monotonic(), status)
            return status

    def serve_until_stopped(self) -> None:
        """Serve until SIGINT or SIGTERM, then close; from the main thread (where signals are handled)."""

        def stop(signum: int, frame: FrameType | None) -> None:
            raise _Stop(signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
        try:
            self.serve_forever()
        except _Stop as stopped:
            log.info("dashboard.stopped", signal=str(stopped))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.server_close()

    def server_close(self) -> None:
        """Stop serving, close the reader's connections and its loop."""
        super().server_close()
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._reader.close(), self._loop).result(timeout=READ_TIMEOUT_S)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
        self._loop.close()
