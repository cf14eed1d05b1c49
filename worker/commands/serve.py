"""``eventworker serve``: CloudEvents over HTTP, the operator API, probes and metrics (FastAPI, uvicorn).

Needs the ``http`` extra (``pip install 'eventworker[http]'``): the worker itself does not.
"""

from __future__ import annotations

from typing import Any

import click

from worker.commands.base import examples, settings_or_exit
from worker.config import Settings
from worker.errors import ConfigError
from worker.logging import configure_logging
from worker.tracing import hooks


def start_http(
    host: str | None, port: int | None, what: str, settings: Settings | None = None, **overrides: Any
) -> None:
    """Serve the HTTP application until SIGTERM or SIGINT; shared with ``eventworker dashboard``.

    ``serve`` without a producers file listens on loopback only; ``dashboard`` listens where it is
    told, as it always did, and then takes no anonymous events unless on loopback. ``settings``: read
    already (the caller took its defaults from them); ``overrides``: settings given as options.
    """
    try:
        # Imported here: FastAPI and uvicorn are the optional `http` extra, and --help needs neither.
        from worker.http.server import listen, load_producers, serve
    except ImportError as exc:
        raise click.ClickException(
            f"{what} needs the http extra ({exc.name} is missing): pip install 'eventworker[http]'"
        ) from None
    settings = settings or settings_or_exit()
    if overrides:
        settings = settings.model_copy(update=overrides)
    # A server logs as the worker does (settings_or_exit keeps a one-shot command's logs to warnings).
    configure_logging(settings.log_level, settings.log_format, settings.secrets())
    try:
        producers = load_producers(settings)
        # Before the application is made: its tracing middleware is added only with tracing on.
        if hooks.start(f"eventworker-{what}", settings.secrets(), set_global=False) is not None:
            configure_logging(
                settings.log_level, settings.log_format, settings.secrets(), processors=hooks.log_processors()
            )
    except ConfigError as exc:
        click.echo(f"eventworker: configuration error: {exc}", err=True)
        raise SystemExit(2) from None
    try:
        sock = listen(
            host or settings.http_host,
            settings.http_port if port is None else port,
            producers,
            click.echo,
            loopback_without=what == "serve",
        )
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host or settings.http_host}: {exc.strerror or exc}"
        ) from None
    shown, bound = sock.getsockname()[:2]
    shown = f"[{shown}]" if ":" in shown else shown
    click.echo(f"{what} on http://{shown}:{bound}/ (events: POST /events; API: /api; docs: /docs)")
    click.echo("Ctrl-C or SIGTERM stops it, after the requests in flight")
    try:
        serve(settings, sock, producers)
    finally:
        hooks.stop()


@click.command(
    "serve",
    epilog=examples(
        "eventworker serve",
        "EVENTWORKER_PRODUCERS_FILE=producers.json eventworker serve --host 0.0.0.0 --port 8000",
    ),
)
@click.option("--host", help="Address to listen on [default: EVENTWORKER_HTTP_HOST, 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), help="Port [default: EVENTWORKER_HTTP_PORT, 8000].")
def serve_command(host: str | None, port: int | None) -> None:
    """Receive CloudEvents over HTTP (POST /events) and serve the operator API, probes and metrics.

    Producers authenticate with the bearer tokens of EVENTWORKER_PRODUCERS_FILE; without that file
    it listens on loopback only. SIGTERM lets requests in flight finish, then exits 0.
    """
    start_http(host, port, "serve")
