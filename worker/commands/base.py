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

import asyncpg
import click
import orjson
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from worker.config import Settings, load_settings, unknown_variables
from worker.db.engine import Database
from worker.db.failures import is_undefined_object, unannounced_pooler
from worker.db.replica import ReadRouter
from worker.errors import ConfigError, EventWorkerError
from worker.logging import configure_logging, redact_text

T = TypeVar("T")
EXIT_CONFIG = 2


def settings_or_exit() -> Settings:
    """The settings; a bad one ends the command with one line and exit status 2. A variable that is no
    setting (a typo, most likely) is a warning on stderr, or that error with ``strict_settings``."""
    try:
        settings = load_settings()
        unknown = [] if settings.strict_settings else unknown_variables()
    except ConfigError as exc:
        click.echo(f"eventworker: configuration error: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from None
    for variable in unknown:
        click.echo(f"eventworker: warning: {variable.name}: {variable.problem('ignored')}", err=True)
    # Library warnings (arq's Redis reconnects, say) go through the same redacting pipeline.
    level = "DEBUG" if settings.log_level == "DEBUG" else "WARNING"
    configure_logging(level, settings.log_format, settings.secrets())
    return settings


#: What a server (or the driver talking to it) raises: a command ends on these with one line, not a
#: traceback. asyncpg's own exceptions come unwrapped from the export's COPY.
SERVER_ERRORS = (DBAPIError, RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def run_or_exit(coroutine: Awaitable[T], settings: Settings) -> T:
    """Run a command's coroutine; a server's error ends it with one redacted line and exit status 1.

    A table or column that does not exist is explained by the schema (:func:`schema_message`):
    on a database never migrated, or behind this version, the line names ``eventworker migrate``.
    """
    try:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    except EventWorkerError as exc:
        message = str(exc)
    except SERVER_ERRORS as exc:
        # asyncpg's own clash, unwrapped (the export's COPY); SQLAlchemy's engine raises it named already.
        pooler = unannounced_pooler(exc)
        message = str(pooler) if pooler else schema_message(settings, exc) or error_line(exc)
    click.echo(f"eventworker: {redact_text(message, settings.secrets())}", err=True)
    raise SystemExit(1)


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (of the driver's error, when SQLAlchemy wraps one)."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {reason[0]}"


def schema_message(settings: Settings, failure: BaseException) -> str | None:
    """Why ``failure`` happened when the schema is missing or behind (naming ``eventworker migrate``),
    read from the database's revision; None when that is not why (or the revision cannot be read)."""
    if not is_undefined_object(failure):
        return None
    from worker.db import schema  # imported here: alembic (about 100 ms), which --help does not need

    async def explain(db: Database) -> str | None:
        behind = await schema.behind_error(db.engine, failure)
        return None if behind is None else str(behind)

    try:
        return asyncio.run(with_database(settings, explain))
    except Exception:
        return None  # the original error says what it can


def examples(*commands: str) -> str:
    """A command's epilog: examples of it, which ``--help`` prints as written (click's ``\\b`` keeps
    them from being rewrapped)."""
    return "\b\nExamples:\n" + "\n".join(f"  {command}" for command in commands)


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
