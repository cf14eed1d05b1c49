"""events partitioned by time on a new PostgreSQL database

On PostgreSQL, an ``events`` table with no row becomes a table partitioned by ``received_at``
(``EVENTWORKER_PARTITION_INTERVAL``, a day by default; ``none`` keeps one table), its identities
in ``event_keys`` and the first partitions made (``worker.db.sql.partition_convert``). A table
that holds events is left as it is: converting it is ``eventworker partition``'s work, which
keeps ingestion going (docs/storage.md), where a migration would hold ``events`` for as long
as it takes. MySQL/MariaDB and SQLite keep one table: nothing changes there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 15:30:00.000000
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

import sqlalchemy as sa
from alembic import context, op

from worker.db.schema import PARTITION_INTERVAL, PARTITIONS_AHEAD
from worker.db.sql.partition_convert import new_database_statements
from worker.domain.partitions import INTERVALS, Interval

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    interval = str(context.config.attributes.get(PARTITION_INTERVAL, "none"))
    if bind.dialect.name != "postgresql" or interval not in INTERVALS:
        return
    if bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM events)")).scalar_one():
        return  # stored events: `eventworker partition` converts them while ingestion goes on
    ahead = int(cast(int, context.config.attributes.get(PARTITIONS_AHEAD, 3)))
    for statement in new_database_statements(cast(Interval, interval), datetime.now(UTC), ahead):
        op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    kind = bind.execute(
        sa.text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass('events')")
    ).scalar()
    if kind == "p":
        raise RuntimeError(
            "events is partitioned: a downgrade past 0003 would have to copy every event back into one"
            " table; restore a backup taken before `eventworker partition` instead"
        )
