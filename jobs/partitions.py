"""``maintain_partitions``: the hourly cron job that keeps partitions of ``events`` made ahead of now.

Only where ``events`` is partitioned (PostgreSQL, :mod:`worker.db.sql.partition_sql`): every
time from now to ``partitions_ahead`` intervals past the current one gets its partition, in one
short transaction under the advisory lock that an ingest making a missing partition takes too.
Elsewhere the job reads nothing (SQLite, MySQL/MariaDB) or one catalog row (an unpartitioned
PostgreSQL table) and returns. A run that does not happen costs nothing but the margin: an
ingest whose partition is missing makes it itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypedDict

from worker.config import Settings
from worker.constants import MAINTAIN_PARTITIONS_JOB
from worker.db.engine import Database
from worker.db.sql import partition_sql
from worker.domain.partitions import ahead
from worker.logging import get_logger
from worker.runtime.context import WorkerContext
from worker.runtime.jobrunner import job

log = get_logger("eventworker.partitions")


class PartitionsResult(TypedDict):
    """What a run made: the new partitions' names (none where ``events`` is not partitioned)."""

    partitioned: bool
    created: list[str]


async def make_partitions_ahead(db: Database, settings: Settings, now: datetime) -> PartitionsResult:
    """Make the partitions due ahead of ``now``; nothing where ``events`` is one table."""
    if db.dialect != "postgresql":
        return PartitionsResult(partitioned=False, created=[])
    async with db.transaction(MAINTAIN_PARTITIONS_JOB) as session:
        shape = await partition_sql.read_layout(session)
        if not shape.partitioned:
            return PartitionsResult(partitioned=False, created=[])
        await partition_sql.lock_partitioning(session)
        due = ahead(
            now, shape.interval, settings.partitions_ahead, await partition_sql.read_partitions(session)
        )
        await partition_sql.create_partitions(session, due)
    created = [partition.name for partition in due]
    log.info("partitions.made_ahead", created=created, interval=shape.interval)
    return PartitionsResult(partitioned=True, created=created)


@job
async def maintain_partitions(ctx: WorkerContext) -> PartitionsResult:
    """Keep ``partitions_ahead`` intervals of partitions made ahead of now."""
    return await make_partitions_ahead(ctx["db"], ctx["settings"], datetime.now(UTC))
