"""Enqueue a job, then wait until Redis replicas hold it: ``WAIT`` on the connection that wrote it.

Redis replicates asynchronously: a primary acknowledges a write before any replica has it, and a
primary that dies then takes the write with it (a failover promotes a replica that never saw it).
``WAIT numreplicas timeout`` blocks until that many replicas acknowledged every write *of its own
connection*, and does nothing inside ``MULTI``. arq's ``enqueue_job`` runs its transaction on a
pooled connection and hands it back, so a ``WAIT`` after it could run on another connection and
wait for nothing. :func:`enqueue_and_wait` therefore takes one connection from the pool and runs
arq's very transaction on it (``WATCH`` the job key, ``PSETEX`` the job, ``ZADD`` it to the queue,
``EXEC``: the job is the same bytes arq writes), then ``WAIT``.

A job already kept under the id (a try whose reply was lost, or one that was not confirmed in time)
is left as it is; for ``WAIT`` to cover it, the connection first writes a marker key
(:data:`~worker.constants.REPLICATION_MARK_KEY`): replication keeps the order of writes, so a
replica that has the marker has the job written before it.

Redis 7.0 has no ``WAITAOF``: a confirmed job is in the memory of that many replicas, not
necessarily on any disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix

from worker.constants import REPLICATION_MARK_KEY

#: How long the marker key lives: it only needs to be written.
_MARK_TTL_MS = 60_000


@dataclass(frozen=True)
class Enqueued:
    """What :func:`enqueue_and_wait` did."""

    #: True: this call queued the job. False: Redis already kept something under the id.
    written: bool
    #: When not written: what Redis keeps under the id (the job, else its result).
    kept: bytes | None
    #: Replicas that acknowledged the job (``WAIT``'s answer).
    replicas: int


async def _call(connection: Any, *args: Any) -> Any:
    await connection.send_command(*args)
    return await connection.read_response()


async def _calls(connection: Any, *commands: tuple[Any, ...]) -> list[Any]:
    """Send ``commands`` in one write and read every reply (an error reply raises)."""
    await connection.send_packed_command(connection.pack_commands(commands))
    return [await connection.read_response() for _ in commands]


async def enqueue_and_wait(
    redis: ArqRedis,
    job: bytes,
    *,
    job_id: str,
    queue_name: str,
    score: int,
    expires_ms: int,
    replicas: int,
    timeout_ms: int,
) -> Enqueued:
    """Queue the serialized ``job`` under ``job_id`` unless something is kept there, then ``WAIT``.

    Everything runs on one connection; an error closes it (its replies may be half read) and is
    raised: the caller tries again under the same id.
    """
    job_key, result_key = job_key_prefix + job_id, result_key_prefix + job_id
    pool = redis.connection_pool
    connection = await pool.get_connection()
    try:
        await _call(connection, "WATCH", job_key)
        kept = [value for value in await _call(connection, "MGET", job_key, result_key) if value is not None]
        written = False
        if not kept:
            *_, applied = await _calls(
                connection,
                ("MULTI",),
                ("PSETEX", job_key, expires_ms, job),
                ("ZADD", queue_name, score, job_id),
                ("EXEC",),
            )
            written = applied is not None  # None: the job key changed under the WATCH
            if not written:
                kept = [v for v in await _call(connection, "MGET", job_key, result_key) if v is not None]
        else:
            await _call(connection, "UNWATCH")
        if not written:
            await _call(connection, "SET", REPLICATION_MARK_KEY, job_id, "PX", _MARK_TTL_MS)
        confirmed = int(await _call(connection, "WAIT", replicas, timeout_ms))
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
    return Enqueued(written, kept[0] if kept else None, confirmed)
