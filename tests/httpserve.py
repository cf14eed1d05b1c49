"""``eventworker serve`` as a user runs it: a process on a free port, SIGTERM to stop; producers files."""

from __future__ import annotations

import hashlib
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson


class ServeProcess:
    """``python -m worker serve --port 0`` (or ``dashboard``), stderr in a file; ``url`` once listening."""

    def __init__(self, env: dict[str, str], log: Path, command: str = "serve", *args: str) -> None:
        self.log = log
        self._err = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", command, "--port", "0", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        assert self.process.stdout is not None
        self.lines: list[str] = []
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"{command} exited {self.process.wait()}: {self.output()}")
            self.lines.append(line)
            if " on http://" in line:
                self.url = line.split(" on ", 1)[1].split()[0].rstrip("/")
                break

    def output(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig``; the exit status once the process ended."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()

    def _close(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._err.close()


def producers_file(path: Path, producers: dict[str, list[str]]) -> dict[str, str]:
    """Write a producers file for ``{name: [source prefixes]}``; each producer's token, by name."""
    tokens = {name: secrets.token_urlsafe(24) for name in producers}
    entries: list[dict[str, Any]] = [
        {"name": name, "token_sha256": hashlib.sha256(tokens[name].encode()).hexdigest(), "sources": sources}
        for name, sources in producers.items()
    ]
    path.write_bytes(orjson.dumps(entries))
    return tokens


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class InThreadServer:
    """The HTTP application under uvicorn in a thread of this process, on a free loopback port: for tests
    whose servers are in-process too (memory:// Redis, a SQLite file)."""

    def __init__(self, settings: Any, **options: Any) -> None:
        import threading

        import uvicorn

        from worker.http.app import create_app

        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings, **options), log_config=None, access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign] - not the main thread
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self._thread.is_alive(), "the server did not start"
            assert time.monotonic() < deadline, "the server did not start within 30 s"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()
