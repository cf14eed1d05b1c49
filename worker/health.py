"""Health: is a worker alive (fresh heartbeat in Redis), the database reachable and its schema current."""

from __future__ import annotations

from worker.config import Settings
from worker.constants import HEALTH_CHECK_SUFFIX
from worker.db import schema
from worker.db.engine import Database
from worker.logging import redact_text
from worker.redis import connect


async def health(settings: Settings) -> list[str]:
    """Problems found; empty when healthy."""
    problems: list[str] = []
    secrets = settings.secrets()
    try:
        redis = await connect(settings.redis_url)
        try:
            if not await redis.get(settings.queue_name + HEALTH_CHECK_SUFFIX):
                problems.append(
                    f"no worker heartbeat in Redis for queue {settings.queue_name} "
                    f"(written every {settings.health_check_interval:g}s by a running worker)"
                )
        finally:
            await redis.aclose(close_connection_pool=True)
    except Exception as exc:
        problems.append(redact_text(f"redis unreachable: {exc}", secrets))
    db = Database.from_settings(settings)
    try:
        await schema.ensure_current(db.engine)
    except Exception as exc:
        problems.append(redact_text(f"database: {exc}".splitlines()[0], secrets))
    finally:
        await db.dispose()
    return problems
