"""What workers record in Redis beside arq's keys, for ``status``, ``health`` and the dashboard.

arq's own keys cannot say which worker runs a job, and its one health-check key per queue
only shows the last worker that wrote it. So each worker keeps three hashes per queue up to
date (key prefixes in :mod:`worker.constants`, the queue name after them):

``eventworker:workers:<queue>``
    worker id -> :class:`WorkerBeat` (JSON), rewritten every ``health_check_interval`` by
    the worker's heartbeat task and removed when it stops cleanly. A worker that stopped
    beating is *stale* after :data:`STALE_AFTER_BEATS` intervals; its record stays, so a
    crash shows, until :data:`FORGET_AFTER_S` later the next heartbeat of any worker drops it.
``eventworker:running:<queue>``
    arq job id -> :class:`RunningJob`. A worker writes its running jobs in one pipelined call
    every :data:`worker.runtime.monitor.RUNNING_FLUSH_S` (a job that ends before that is never written)
    and cron jobs at once; an entry is removed when its job ends. An entry past its deadline
    belongs to a worker that died mid-job.
``eventworker:cron:<queue>``
    ``<job>`` -> the cron job's last start, ``<job>:done`` -> its last finished run
    (:class:`CronRun`, with outcome and error).

Every hash expires :data:`FORGET_AFTER_S` after its last write, so nothing outlives the
workers for long. Times are stored as Unix seconds. Encoding and decoding are pure
functions; the coroutines here do one pipelined Redis round trip each, and the callers
decide what a Redis error means (a job never fails because of this bookkeeping).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from worker.constants import CRON_KEY_PREFIX, RUNNING_KEY_PREFIX, WORKERS_KEY_PREFIX

#: ``redis.asyncio.Redis`` (arq's ``ArqRedis``); redis-py's stubs mistype its async pipeline methods.
RedisClient = Any

#: Heartbeat intervals a worker may miss before it counts as stale.
STALE_AFTER_BEATS: Final = 3
#: Seconds after which a stale worker's record, or a running-job entry past its deadline, is dropped.
FORGET_AFTER_S: Final = 3600
#: Longest error text kept for a cron run.
MAX_ERROR_CHARS: Final = 500

#: How a job try ended: done, asked for a retry, recorded as failed, error (arq ends it), cancelled.
OUTCOMES: Final = ("ok", "retry", "failed", "error", "cancelled")


def workers_key(queue: str) -> str:
    return WORKERS_KEY_PREFIX + queue


def running_key(queue: str) -> str:
    return RUNNING_KEY_PREFIX + queue


def cron_key(queue: str) -> str:
    return CRON_KEY_PREFIX + queue


def tracking_keys(queue: str) -> tuple[str, str, str]:
    """Every key this module writes for ``queue``."""
    return workers_key(queue), running_key(queue), cron_key(queue)


def _time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _seconds(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    """One worker as its last heartbeat described it."""

    worker_id: str
    host: str
    pid: int
    started_at: datetime
    last_heartbeat: datetime
    interval_s: float
    """How often this worker beats (its ``health_check_interval``)."""
    jobs_running: int
    jobs_done: dict[str, int] = field(default_factory=dict)
    """Job tries this worker finished since it started, by outcome (:data:`OUTCOMES`)."""
    metrics_port: int | None = None

    def age_s(self, now: datetime) -> float:
        """Seconds since the last heartbeat."""
        return max(0.0, (now - self.last_heartbeat).total_seconds())

    def stale_after_s(self) -> float:
        return STALE_AFTER_BEATS * self.interval_s

    def is_stale(self, now: datetime) -> bool:
        """True when the worker missed :data:`STALE_AFTER_BEATS` heartbeats."""
        return self.age_s(now) > self.stale_after_s()


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job try some worker is running."""

    job_id: str
    job: str
    worker_id: str
    job_try: int
    started_at: datetime
    deadline: datetime
    """When the worker's time limit ends the try; later, the worker died and left it behind."""

    def overdue(self, now: datetime) -> bool:
        return now > self.deadline


@dataclass(frozen=True, slots=True)
class CronRun:
    """A cron job's last start, and its last finished run."""

    job: str
    job_id: str
    worker_id: str
    started_at: datetime
    finished_at: datetime | None = None
    outcome: str | None = None
    """One of :data:`OUTCOMES`; None while the run is going on."""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CronStatus:
    """What status shows for one cron job: its last start and its last finished run, if any."""

    job: str
    last_start: CronRun | None
    last_finished: CronRun | None

    @property
    def running(self) -> bool:
        """True when the last start has not finished (or its worker died in it)."""
        start, done = self.last_start, self.last_finished
        return start is not None and (done is None or done.job_id != start.job_id)


# --- encoding (pure) -------------------------------------------------------------------------------


def _encode(record_of: WorkerBeat | RunningJob | CronRun, times: tuple[str, ...]) -> bytes:
    record = dataclasses.asdict(record_of)
    for name in times:
        record[name] = _seconds(record[name])
    return orjson.dumps(record)


def _decode(raw: bytes | str, times: tuple[str, ...]) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(raw)
    for name in times:
        record[name] = _time(record[name])
    return record


_BEAT_TIMES = ("started_at", "last_heartbeat")
_RUNNING_TIMES = ("started_at", "deadline")
_CRON_TIMES = ("started_at", "finished_at")


def encode_beat(beat: WorkerBeat) -> bytes:
    return _encode(beat, _BEAT_TIMES)


def decode_beat(raw: bytes | str) -> WorkerBeat:
    return WorkerBeat(**_decode(raw, _BEAT_TIMES))


def encode_running(run: RunningJob) -> bytes:
    return _encode(run, _RUNNING_TIMES)


def decode_running(raw: bytes | str) -> RunningJob:
    return RunningJob(**_decode(raw, _RUNNING_TIMES))


def encode_cron(run: CronRun) -> bytes:
    return _encode(run, _CRON_TIMES)


def decode_cron(raw: bytes | str) -> CronRun:
    return CronRun(**_decode(raw, _CRON_TIMES))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decoded(entries: Mapping[Any, Any], decode: Any) -> dict[str, Any]:
    """Decode a hash's values; an entry that is not ours (written by hand, an old version) is skipped."""
    decoded = {}
    for key, raw in entries.items():
        try:
            decoded[_text(key)] = decode(raw)
        except (ValueError, TypeError, KeyError):
            continue
    return decoded


def cron_statuses(entries: Mapping[Any, Any], names: list[str]) -> list[CronStatus]:
    """The cron hash's entries as one status per cron job in ``names`` (and any other job recorded)."""
    runs: dict[str, CronRun] = _decoded(entries, decode_cron)
    jobs = list(dict.fromkeys([*names, *(key.removesuffix(":done") for key in runs)]))
    return [CronStatus(job, runs.get(job), runs.get(f"{job}:done")) for job in jobs]


def forgotten(
    beats: Mapping[str, WorkerBeat], runs: Mapping[str, RunningJob], now: datetime
) -> tuple[list[str], list[str]]:
    """Worker ids and job ids whose records are older than :data:`FORGET_AFTER_S`, to drop."""
    old_workers = [wid for wid, beat in beats.items() if beat.age_s(now) > FORGET_AFTER_S]
    old_runs = [jid for jid, run in runs.items() if (now - run.deadline).total_seconds() > FORGET_AFTER_S]
    return old_workers, old_runs


# --- Redis ----------------------------------------------------------------------------------------


async def write_heartbeat(redis: RedisClient, queue: str, beat: WorkerBeat) -> None:
    """Store ``beat``, and drop records of workers and jobs long gone (one read, one write)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(workers_key(queue))
        pipe.hgetall(running_key(queue))
        beats_raw, runs_raw = await pipe.execute()
    old_workers, old_runs = forgotten(
        _decoded(beats_raw, decode_beat), _decoded(runs_raw, decode_running), beat.last_heartbeat
    )
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(workers_key(queue), beat.worker_id, encode_beat(beat))
        pipe.expire(workers_key(queue), FORGET_AFTER_S)
        if old_workers:
            pipe.hdel(workers_key(queue), *old_workers)
        if old_runs:
            pipe.hdel(running_key(queue), *old_runs)
        await pipe.execute()


async def remove_worker(redis: RedisClient, queue: str, worker_id: str) -> None:
    """Forget a worker that stops cleanly."""
    await redis.hdel(workers_key(queue), worker_id)


async def job_started(redis: RedisClient, queue: str, run: RunningJob, *, cron: bool) -> None:
    """Record that ``run`` started (and, for a cron job, that it is the job's last start)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(running_key(queue), run.job_id, encode_running(run))
        pipe.expire(running_key(queue), FORGET_AFTER_S)
        if cron:
            start = CronRun(run.job, run.job_id, run.worker_id, run.started_at)
            pipe.hset(cron_key(queue), run.job, encode_cron(start))
            pipe.expire(cron_key(queue), FORGET_AFTER_S * 24 * 7)
        await pipe.execute()


async def update_running(redis: RedisClient, queue: str, started: list[RunningJob], ended: list[str]) -> None:
    """Remove the ``ended`` job ids from the running jobs, then add ``started`` (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        if ended:
            pipe.hdel(running_key(queue), *ended)
        if started:
            pipe.hset(running_key(queue), mapping={run.job_id: encode_running(run) for run in started})
            pipe.expire(running_key(queue), FORGET_AFTER_S)
        await pipe.execute()


async def job_finished(
    redis: RedisClient,
    queue: str,
    run: RunningJob,
    *,
    cron: bool,
    outcome: str,
    error: str | None,
    now: datetime,
) -> None:
    """Remove ``run`` from the running jobs (and, for a cron job, record how it ended)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hdel(running_key(queue), run.job_id)
        if cron:
            done = CronRun(
                run.job,
                run.job_id,
                run.worker_id,
                run.started_at,
                finished_at=now,
                outcome=outcome,
                error=None if error is None else error[:MAX_ERROR_CHARS],
            )
            pipe.hset(cron_key(queue), f"{run.job}:done", encode_cron(done))
        await pipe.execute()


async def read_workers(redis: RedisClient, queue: str) -> list[WorkerBeat]:
    """Every worker recorded for ``queue``, by worker id."""
    beats = _decoded(await redis.hgetall(workers_key(queue)), decode_beat)
    return [beats[key] for key in sorted(beats)]


async def read_running(redis: RedisClient, queue: str) -> list[RunningJob]:
    """Every job recorded as running on ``queue``, oldest first."""
    runs = _decoded(await redis.hgetall(running_key(queue)), decode_running)
    return sorted(runs.values(), key=lambda run: (run.started_at, run.job_id))


async def read_cron(redis: RedisClient, queue: str, names: list[str]) -> list[CronStatus]:
    """The last start and finished run of each cron job in ``names``."""
    return cron_statuses(await redis.hgetall(cron_key(queue)), names)
