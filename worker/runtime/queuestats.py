"""How full an arq queue is: jobs waiting, due now, running, and how long the oldest due job has waited.

arq keeps a job in the queue's sorted set (score: when it is due, ms since the epoch) from
enqueue until it *finishes*, so the set mixes waiting and running jobs. The running ones are
told apart with the workers' own records (:mod:`worker.runtime.tracking`), and the scores of those
are read back with one ``ZMSCORE``: two pipelined round trips whatever the queue's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ``redis.asyncio.Redis`` (arq's ``ArqRedis``); redis-py's stubs mistype its async pipeline methods.
RedisClient = Any


@dataclass(frozen=True, slots=True)
class QueueSample:
    """One look at a queue."""

    name: str
    waiting: int
    """Jobs not started yet: due now, or deferred to a later time (a retry's back-off, say)."""
    due: int
    """Of those, jobs due now: they wait only for a free worker."""
    in_progress: int
    """Jobs some worker is running."""
    oldest_due_age_s: float
    """Seconds the longest-waiting due job has been due (0 when none is)."""

    @property
    def deferred(self) -> int:
        return self.waiting - self.due


def sample_from(
    name: str,
    total: int,
    due_total: int,
    running_scores: list[float | None],
    oldest: list[tuple[bytes | str, float]],
    running_ids: set[str],
    now_ms: float,
) -> QueueSample:
    """Combine the raw Redis answers (see :func:`sample_queue`) into a :class:`QueueSample`."""
    queued_running = [score for score in running_scores if score is not None]
    due_running = sum(1 for score in queued_running if score <= now_ms)
    first_waiting = next(
        (
            score
            for member, score in oldest
            if (member.decode() if isinstance(member, bytes) else member) not in running_ids
        ),
        None,
    )
    return QueueSample(
        name=name,
        waiting=max(0, total - len(queued_running)),
        due=max(0, due_total - due_running),
        in_progress=len(running_ids),
        oldest_due_age_s=0.0 if first_waiting is None else max(0.0, (now_ms - first_waiting) / 1000),
    )


async def sample_queue(redis: RedisClient, name: str, running_ids: set[str], now_ms: float) -> QueueSample:
    """Look at queue ``name``; ``running_ids`` are the jobs the workers record as running."""
    ids = sorted(running_ids)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(name)
        pipe.zcount(name, "-inf", now_ms)
        if ids:
            pipe.zmscore(name, ids)
        # The oldest due jobs, enough of them that one is not running if any such job exists.
        pipe.zrangebyscore(name, "-inf", now_ms, start=0, num=len(ids) + 1, withscores=True)
        answers = await pipe.execute()
    total, due_total = int(answers[0]), int(answers[1])
    scores = answers[2] if ids else []
    return sample_from(name, total, due_total, list(scores), list(answers[-1]), running_ids, now_ms)
