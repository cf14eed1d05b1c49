"""``store_undecodable_job``: keep a job whose bytes in Redis were not ours, as a dead letter.

The worker's deserializer (``worker.protocol.serialization``) routes such jobs here instead
of failing them, so they are neither executed, retried forever, nor lost.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from worker.constants import UNDECODABLE_JOB
from worker.db.sql import statements
from worker.logging import get_logger
from worker.protocol.events import Rejection
from worker.runtime.context import NO_METRICS, WorkerContext
from worker.runtime.jobrunner import job

log = get_logger("eventworker.undecodable")


def _raw_bytes(raw: Any) -> bytes:
    if isinstance(raw, str):
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return raw.encode("utf-8", "backslashreplace")
    return repr(raw).encode()


@job
async def store_undecodable_job(ctx: WorkerContext, raw: Any, problem: Any = "unknown") -> dict[str, int]:
    """Store the raw job bytes (base64 in ``raw``) with ``problem`` as a dead letter."""
    data = _raw_bytes(raw)
    error = {"loc": "", "msg": str(problem)[:1000], "type": "undecodable_job"}
    rejection = Rejection(raw=data, reason="undecodable_job", errors=[error])
    row = statements.dead_letter_row(rejection, 0, ctx.get("job_id"), UNDECODABLE_JOB, datetime.now(UTC))
    async with ctx["db"].transaction(UNDECODABLE_JOB) as session:
        await statements.insert_dead_letters(session, [row])
    ctx.get("metrics", NO_METRICS).count_ingest([], 0, 0, [rejection])
    log.warning("job.undecodable", problem=str(problem)[:200], raw_bytes=len(data))
    return {"rejected": 1}
