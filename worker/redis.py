"""Redis connections for arq: a real server from a URL, or the demo's in-process stand-in.

``memory://`` builds an ``ArqRedis`` on fakeredis, shared by everything in the one
process (the demo runs producer and worker side by side). Nothing here imports
SQLAlchemy, so producers can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool

from worker.serialization import deserialize, serialize

MEMORY_URL = "memory://"
_memory_server: Any = None


class MemoryArqRedis(ArqRedis):
    """ArqRedis on fakeredis (which has no INFO command; see :func:`patch_arq_for_memory`)."""


def memory_pool(job_deserializer: Callable[[bytes], Any] = deserialize) -> MemoryArqRedis:
    """The process's in-process Redis stand-in, as an ArqRedis pool."""
    import fakeredis  # imported here: only the demo and tests need it

    global _memory_server  # one stand-in per process, like one server
    if _memory_server is None:
        _memory_server = fakeredis.FakeServer()
    pool = fakeredis.FakeAsyncRedis(server=_memory_server).connection_pool
    return MemoryArqRedis(connection_pool=pool, job_serializer=serialize, job_deserializer=job_deserializer)


def patch_arq_for_memory() -> None:
    """Let arq's start-up skip its Redis INFO log line on the in-process stand-in only."""
    import arq.worker

    namespace = vars(arq.worker)
    original = namespace["log_redis_info"]
    if getattr(original, "_eventworker", False):
        return

    async def log_redis_info(redis: Any, log_func: Callable[[str], Any]) -> None:
        if isinstance(redis, MemoryArqRedis):
            log_func("redis: in-process stand-in (memory://)")
            return
        await original(redis, log_func)

    log_redis_info._eventworker = True  # type: ignore[attr-defined]
    namespace["log_redis_info"] = log_redis_info


def redis_settings(url: str) -> RedisSettings:
    """arq settings for a redis://, rediss:// or unix:// URL, failing fast rather than hanging."""
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 5
    settings.conn_retries = 3
    return settings


async def connect(url: str, job_deserializer: Callable[[bytes], Any] | None = None) -> ArqRedis:
    """An ArqRedis pool for ``url`` that speaks JSON."""
    job_deserializer = job_deserializer or deserialize
    if url == MEMORY_URL:
        return memory_pool(job_deserializer)
    return await create_pool(redis_settings(url), job_serializer=serialize, job_deserializer=job_deserializer)
