"""Schema version checks and upgrades, through Alembic, on the worker's own engine.

The one place that decides "the schema is missing or behind: run `eventworker migrate`":
:func:`ensure_current` before a worker starts (and in ``health``), :func:`behind_error` after a
statement failed on a table or column that does not exist (every command, ``status``, the dashboard).
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.db.failures import is_undefined_object
from worker.errors import SchemaBehindError

SCRIPT_LOCATION = "worker:migrations"


def alembic_config() -> Config:
    """Alembic configuration pointing at the migrations shipped in the package."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def head_revision() -> str:
    """The newest migration this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no migrations found")
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current)


async def ensure_current(engine: AsyncEngine) -> None:
    """Raise SchemaBehindError unless the database is at this code's head revision."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise SchemaBehindError(current, head)


async def behind_error(engine: AsyncEngine, failure: BaseException) -> SchemaBehindError | None:
    """What explains ``failure`` when the schema is missing or behind: a :class:`SchemaBehindError`
    naming ``eventworker migrate``; None when ``failure`` is something else.

    Only a missing table or column (:func:`worker.db.failures.is_undefined_object`) sends us to
    read the revision; at head, the missing object is a real error and stands as it is.
    """
    if not is_undefined_object(failure):
        return None
    current, head = await current_revision(engine), head_revision()
    return None if current == head else SchemaBehindError(current, head)


#: ``Config.attributes`` keys a migration reads: how migration 0003 lays out a new database's events.
PARTITION_INTERVAL = "partition_interval"
PARTITIONS_AHEAD = "partitions_ahead"


def _upgrade(connection: Connection, revision: str, attributes: dict[str, object]) -> None:
    config = alembic_config()
    config.attributes.update(attributes, connection=connection)
    command.upgrade(config, revision)


async def upgrade(
    engine: AsyncEngine,
    revision: str = "head",
    *,
    partition_interval: str = "none",
    partitions_ahead: int = 3,
) -> tuple[str | None, str | None]:
    """Apply migrations up to ``revision``; return the revisions before and after.

    ``partition_interval``: on PostgreSQL, migration 0003 makes an empty ``events`` a table partitioned
    by it, with ``partitions_ahead`` intervals made ahead (``none``: one table, as before).
    """
    before = await current_revision(engine)
    attributes = {PARTITION_INTERVAL: partition_interval, PARTITIONS_AHEAD: partitions_ahead}
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, revision, attributes)
    return before, await current_revision(engine)
