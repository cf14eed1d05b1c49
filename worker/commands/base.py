"""What every CLI command shares: settings or one clear line, a database for one command, running a
coroutine, printing rows.

Command modules import this, never ``worker.commands.cli`` (which imports them to register them).
``eventworker --help`` imports every command module, so they import the jobs, the worker's entry
(``worker.main``), the operator views (``worker.ops``), the migrations (alembic) and anything built
on arq inside the command that runs them, each with a comment: together those would add several
hundred milliseconds to every start-up (``tests/unit/test_cli_startup.py`` keeps them out).
Everything else, config, the database layer, pure logic, is imported at the top.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from worker.config import Settings, load_settings
from worker.db.engine import Database
from worker.db.replica import ReadRouter
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


async def with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` on a database opened for it from ``settings``, disposed of however ``work`` ends."""
    db = Database.from_settings(settings)
    try:
        return await work(db)
    finally:
        await db.dispose()


async def with_read_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """:func:`with_database` for heavy reads: on the read replica (``DATABASE_READ_URL``) while it
    keeps up, else on the primary (:class:`~worker.db.replica.ReadRouter`)."""
    router = ReadRouter(settings)
    try:
        db, _lag = await router.choose()
        return await work(db)
    finally:
        await router.dispose()


async def with_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction (committed when it returns) on a database opened for it."""

    async def in_transaction(db: Database) -> T:
        async with db.transaction() as session:
            return await work(session)

    return await with_database(settings, in_transaction)
