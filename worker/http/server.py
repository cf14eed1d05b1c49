"""Running the application under uvicorn: ``eventworker serve`` (and ``eventworker dashboard``).

:func:`load_producers` reads the producers file, or ends with one line naming it. :func:`listen`
binds the socket before uvicorn starts, so the line a person (or a test) reads names the real port,
and decides the address: without a producers file anyone who can connect may send events, so
the server listens on loopback only and says so. :func:`serve` runs uvicorn with what a server
facing the world needs from it: no proxy headers believed (the app decides from
``EVENTWORKER_HTTP_TRUSTED_PROXIES``), no access log (requests are counted in the metrics), and
on SIGTERM or SIGINT it stops accepting, lets the requests in flight finish for up to
``EVENTWORKER_SHUTDOWN_WAIT`` seconds, closes the engine and the pool, and exits 0.
"""

from __future__ import annotations

import ipaddress
import math
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn

from worker.config import Settings
from worker.domain.producers import Producers, ProducersFileError, parse_producers
from worker.errors import ConfigError
from worker.http.app import create_app

LOOPBACK = "127.0.0.1"


def load_producers(settings: Settings) -> Producers | None:
    """The producers file, read and checked; None when none is configured."""
    if settings.producers_file is None:
        return None
    path = Path(settings.producers_file)
    try:
        return parse_producers(path.read_bytes())
    except OSError as exc:
        raise ConfigError("EVENTWORKER_PRODUCERS_FILE", f"{path}: {exc.strerror or exc}") from None
    except ProducersFileError as exc:
        raise ConfigError("EVENTWORKER_PRODUCERS_FILE", f"{path}: {exc}") from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(
    host: str,
    port: int,
    producers: Producers | None,
    say: Callable[[str], None],
    *,
    loopback_without: bool = True,
) -> socket.socket:
    """The listening socket: on ``host``, or, ``loopback_without`` a producers file, on loopback."""
    if producers is None and loopback_without and not is_loopback(host):
        say(
            f"no EVENTWORKER_PRODUCERS_FILE: any client could send events, so listening on {LOOPBACK} only"
            f" (not {host}); list your producers to listen further"
        )
        host = LOOPBACK
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def serve(settings: Settings, sock: socket.socket, producers: Producers | None) -> None:
    """Run the application on ``sock`` until SIGTERM or SIGINT; return once drained.

    Without a producers file, events are taken only when ``sock`` is on loopback.
    """
    address = str(sock.getsockname()[0])
    config = uvicorn.Config(
        create_app(settings, producers, anonymous_events=producers is not None or is_loopback(address)),
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_wait),
        lifespan="on",
    )
    server = uvicorn.Server(config)

    def drained(_signal: int, _frame: FrameType | None) -> None:
        """What uvicorn re-raises after its graceful shutdown: nothing more to do, so the exit is 0."""

    # uvicorn handles SIGTERM and SIGINT while it runs, then puts the previous handlers back and raises
    # the signal again: with the defaults that would kill the process after a clean shutdown.
    previous = {sig: signal.signal(sig, drained) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise SystemExit(1)  # the lifespan failed to start; uvicorn logged why
