"""Health: are the workers alive (fresh heartbeats in Redis), the database reachable and its schema current.

``eventworker health`` (alias ``check``; the Docker ``HEALTHCHECK``) prints each problem
:func:`health` finds and exits 1, or 0 when there is none. Which heartbeats count:

- by default, every worker recorded on the queue: none alive, or any stale, is a problem;
- ``worker_id``: that one worker's;
- ``host`` (``--local``): the worker on this host that started last, which in a container
  running one worker is the container's own, whatever stale records an earlier crash left.

A worker is stale when it missed ``tracking.STALE_AFTER_BEATS`` of its own heartbeat
intervals. :func:`heartbeat_problems` is the pure part, tested with tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from worker.config import Settings
from worker.db import schema
from worker.db.engine import Database
from worker.logging import redact_text
from worker.protocol.redis import connect
from worker.runtime import tracking
from worker.runtime.tracking import WorkerBeat

#: Longest each of the Redis and database checks may take: they run at once, within Docker's
#: default 30 s health-check timeout and the image's 10 s one.
CHECK_TIMEOUT_S: Final = 8.0


def _stale(beat: WorkerBeat, now: datetime) -> str:
    return (
        f"worker {beat.worker_id}: last heartbeat {beat.age_s(now):.0f}s ago"
        f" (stale after {beat.stale_after_s():g}s)"
    )


def heartbeat_problems(
    beats: Sequence[WorkerBeat],
    now: datetime,
    *,
    queue: str,
    interval_s: float,
    worker_id: str | None = None,
    host: str | None = None,
) -> list[str]:
    """What is wrong with the heartbeats ``beats`` of ``queue``'s workers; empty when healthy."""
    if worker_id is not None:
        mine = [beat for beat in beats if beat.worker_id == worker_id]
        if not mine:
            return [f"no heartbeat from worker {worker_id} in Redis for queue {queue}"]
        return [_stale(mine[0], now)] if mine[0].is_stale(now) else []
    if host is not None:
        local = [beat for beat in beats if beat.host == host]
        if not local:
            return [f"no heartbeat from a worker on host {host} in Redis for queue {queue}"]
        newest = max(local, key=lambda beat: beat.started_at)
        return [_stale(newest, now)] if newest.is_stale(now) else []
    if not beats:
        every = f"written every {interval_s:g}s by a running worker"
        return [f"no worker heartbeat in Redis for queue {queue} ({every})"]
    return [_stale(beat, now) for beat in beats if beat.is_stale(now)]


async def _redis_problems(settings: Settings, worker_id: str | None, host: str | None) -> list[str]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            redis = await connect(settings.redis_url)
            try:
                beats = await tracking.read_workers(redis, settings.queue_name)
            finally:
                await redis.aclose(close_connection_pool=True)
    except TimeoutError:
        return [f"redis unreachable: no answer within {CHECK_TIMEOUT_S:g}s"]
    except Exception as exc:
        return [redact_text(f"redis unreachable: {exc}", settings.secrets())]
    return heartbeat_problems(
        beats,
        datetime.now(UTC),
        queue=settings.queue_name,
        interval_s=settings.health_check_interval,
        worker_id=worker_id,
        host=host,
    )


async def _database_problems(settings: Settings) -> list[str]:
    db = Database.from_settings(settings)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await schema.ensure_current(db.engine)
    except TimeoutError:
        return [f"database unreachable: no answer within {CHECK_TIMEOUT_S:g}s"]
    except Exception as exc:
        return [redact_text(f"database: {exc}".splitlines()[0], settings.secrets())]
    finally:
        await db.dispose()
    return []


async def health(settings: Settings, *, worker_id: str | None = None, host: str | None = None) -> list[str]:
    """Problems found, Redis's first; empty when healthy. Redis and the database are checked at once."""
    redis_problems, database_problems = await asyncio.gather(
        _redis_problems(settings, worker_id, host), _database_problems(settings)
    )
    return [*redis_problems, *database_problems]
