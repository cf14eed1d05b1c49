"""What every CLI command shares: settings or one clear line, running a coroutine, printing rows.

Command modules import this, never ``worker.commands.cli`` (which imports them to register them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from worker.config import Settings, load_settings
from worker.errors import ConfigError, EventWorkerError
from worker.logging import configure_logging, redact_text

T = TypeVar("T")
EXIT_CONFIG = 2


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        click.echo(f"eventworker: configuration error: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from None
    # Library warnings (arq's Redis reconnects, say) go through the same redacting pipeline.
    level = "DEBUG" if settings.log_level == "DEBUG" else "WARNING"
    configure_logging(level, settings.log_format, settings.secrets())
    return settings


def run_or_exit(coroutine: Awaitable[T], settings: Settings) -> T:
    """Run a command's coroutine; a failure to reach a server ends it with one redacted line."""
    try:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    except EventWorkerError as exc:
        message = str(exc)
    except (DBAPIError, RedisError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""]
        message = f"{type(exc).__name__}: {reason[0]}"
    click.echo(f"eventworker: {redact_text(message, settings.secrets())}", err=True)
    raise SystemExit(1)


def print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(rows, default=str, option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        click.echo("(none)")
    for row in rows:
        click.echo("  ".join(f"{key}={value}" for key, value in row.items()))


async def with_session(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from worker.db.engine import Database

    db = Database.from_settings(settings)
    try:
        async with db.transaction() as session:
            return await work(session)
    finally:
        await db.dispose()
