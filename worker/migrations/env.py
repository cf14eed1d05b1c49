"""Alembic environment: runs on a connection handed in by eventworker, or builds one from settings."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from worker.db.models import Base

target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_from_settings() -> None:
    from worker.config import load_settings
    from worker.db.engine import make_engine

    engine = make_engine(load_settings())
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("eventworker migrations run online only: `eventworker migrate`")

given = context.config.attributes.get("connection")
if given is not None:
    run_on(given)
else:
    asyncio.run(run_from_settings())
