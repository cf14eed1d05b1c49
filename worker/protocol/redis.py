"""Redis connections for arq: one server, a Sentinel-managed primary, or the demo's in-process stand-in.

A ``REDIS_URL`` (read by :mod:`worker.protocol.redis_url`) names one server (``redis://``, ``rediss://``,
``unix://``) or the sentinels that know which server is the primary now (``redis+sentinel://``,
``rediss+sentinel://``). Under Sentinel every new connection asks the sentinels for the primary's
address, and a connection that meets an unreachable primary, or one that was demoted to a replica
(``READONLY``), is dropped and made again: after a failover every client finds the new primary by
itself. arq's own Sentinel path cannot give the sentinels a password of their own and drops the TLS
CA, the timeouts, the retry policy and the pool size, so the pools are built here, for both forms.

``memory://`` builds an ``ArqRedis`` on fakeredis, shared by everything in the one
process (the demo runs producer and worker side by side). Nothing here imports
SQLAlchemy, so producers can use it.

Every connection retries a command that meets an unreachable Redis (refused, reset, timed
out, still loading its data after a restart, no primary known during a failover), reconnecting
with back-off for up to a *retry window*: a worker rides out a Redis restart or failover without
noticing, and a pooled connection left stale by one is replaced on the first command. A worker's
window is ``EVENTWORKER_REDIS_RETRY_WINDOW``; past it the error reaches arq and the worker exits,
for its supervisor to restart. A producer's own connection retries only once at this level:
:class:`~worker.protocol.producer.EventProducer` retries whole enqueues with its own back-off.

A worker's pool (:func:`worker_pool`) also keeps its optimistic transactions (WATCH ...
EXEC, how arq claims a job and enqueues a cron tick) alive across a reconnect; see
:mod:`worker.protocol.reconnect`.

Redis Cluster is refused at start-up (:func:`refuse_cluster`): arq's client speaks to one server,
so on a cluster of several nodes its jobs would meet ``MOVED`` errors mid-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, cast

from arq.connections import ArqRedis
from redis.asyncio.connection import (
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.errors import ConfigError
from worker.protocol.reconnect import ResilientArqRedis
from worker.protocol.redis_url import RedisTarget, parse_redis_url, redact_redis_url
from worker.protocol.serialization import deserialize, serialize

MEMORY_URL = "memory://"
_memory_server: Any = None

#: What an unreachable Redis raises: refused or reset (OSError), dropped or still loading its data
#: after a restart (redis-py's ConnectionError, BusyLoadingError among them), timed out, and, under
#: Sentinel, no primary known right now (MasterNotFoundError, a ConnectionError).
UNAVAILABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

#: Back-off between reconnects within a retry window: 0.1 s, doubling, at most 2 s.
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 2.0

#: Seconds to open a TCP (and TLS) connection before counting the server unreachable.
CONNECT_TIMEOUT_S = 5.0
#: Seconds a sentinel may take to answer: one that hangs must not hold up finding the primary, the
#: next sentinel is asked instead.
SENTINEL_TIMEOUT_S = 2.0
#: Seconds between a Sentinel pool's checks of which server is the primary (see :class:`FollowingPool`).
PRIMARY_RECHECK_S = 1.0
#: A plain client's first PING: tries, and seconds between them (as arq's ``create_pool`` did).
_FIRST_PING_TRIES = 4
_FIRST_PING_DELAY_S = 1.0


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


def redacted(url: str) -> str:
    """``url`` with its passwords (the user's, a Sentinel URL's ``sentinel_password``) as ``***``."""
    return redact_redis_url(url)


def retries_within(window_s: float) -> int:
    """Reconnect attempts whose back-off adds up to at least ``window_s`` seconds (at least 1)."""
    retries, waited = 1, 0.0
    while True:
        waited += min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2.0**retries)
        if waited >= window_s:
            return retries
        retries += 1


def command_retry(window_s: float) -> Retry:
    """redis-py's retry policy for one command: back off and reconnect for about ``window_s`` seconds.

    A window of 0 still retries once at once: after a Redis restart every pooled connection is
    stale, and the first command on each must be able to reconnect.
    """
    # The errors retried are redis-py's own plus those in ``retry_on_error`` (UNAVAILABLE: OSError too).
    if window_s <= 0:
        return Retry(NoBackoff(), 1)
    return Retry(ExponentialBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S), retries_within(window_s))


def _config_error(url: str, problem: str) -> ConfigError:
    return ConfigError("REDIS_URL", f"{redacted(url)}: {problem}")


def _target(url: str) -> RedisTarget:
    try:
        return parse_redis_url(url)
    except ValueError as exc:
        raise _config_error(url, str(exc)) from None


def _node_options(target: RedisTarget, retry_window: float) -> dict[str, Any]:
    """Connection arguments for the Redis servers themselves (not the sentinels)."""
    return {
        "db": target.database,
        "username": target.username,
        "password": target.password,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry": command_retry(retry_window),
        "retry_on_error": list(UNAVAILABLE),
        "encoding": "utf8",
        **target.ssl_options(),
    }


def _sentinel_options(target: RedisTarget) -> dict[str, Any]:
    """Connection arguments for the sentinels: their own credentials, the same TLS."""
    options: dict[str, Any] = {
        "username": target.sentinel_username,
        "password": target.sentinel_password,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": SENTINEL_TIMEOUT_S,
    }
    if target.ssl:
        options |= {"ssl": True, **target.ssl_options()}
    return options


class FollowingPool(SentinelConnectionPool):
    """A Sentinel pool that asks the sentinels, at most every :data:`PRIMARY_RECHECK_S`, where the primary is.

    redis-py's pool asks only when it opens a connection, so after ``SENTINEL FAILOVER`` (or any
    failover that leaves the old primary running) its open connections kept writing to the old
    primary until the sentinels demoted it, some 10 s later; all those writes were lost with it.
    Here a connection taken from the pool that still points to a former primary is reopened.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._next_check = 0.0

    async def ensure_connection(self, connection: Any) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + PRIMARY_RECHECK_S
            # No answer now: the connection's own retry asks again. (When the primary moved, this also
            # closes the idle connections; redis-py leaves it unannotated: the ignore.)
            with contextlib.suppress(MasterNotFoundError):
                await self.get_master_address()  # type: ignore[no-untyped-call]
        if connection.is_connected and self.master_address not in (None, (connection.host, connection.port)):
            await connection.disconnect()
        await super().ensure_connection(connection)

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """Close the connections; closing the whole pool closes those to the sentinels too."""
        await super().disconnect(inuse_connections)
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


def connection_pool(target: RedisTarget, retry_window: float) -> ConnectionPool:
    """The pool for ``target``: one server's, or a Sentinel pool that follows the current primary."""
    options = _node_options(target, retry_window)
    if target.sentinel:
        assert target.service_name is not None  # what makes a target a Sentinel one
        # (redis-py leaves both unannotated: the ignores)
        sentinels = Sentinel(list(target.hosts), sentinel_kwargs=_sentinel_options(target))  # type: ignore[no-untyped-call]
        return FollowingPool(target.service_name, sentinels, is_master=True, ssl=target.ssl, **options)
    if target.unix_socket_path is not None:
        return ConnectionPool(
            connection_class=UnixDomainSocketConnection, path=target.unix_socket_path, **options
        )
    (host, port), kind = target.hosts[0], SSLConnection if target.ssl else Connection
    return ConnectionPool(connection_class=kind, host=host, port=port, **options)


def _client(
    cls: type[ArqRedis],
    url: str,
    retry_window: float,
    job_deserializer: Callable[[bytes], Any],
    queue_name: str | None = None,
) -> ArqRedis:
    client = cast(ArqRedis, cls.from_pool(connection_pool(_target(url), retry_window)))
    client.job_serializer = serialize
    client.job_deserializer = job_deserializer
    if queue_name is not None:
        client.default_queue_name = queue_name
    return client


def worker_pool(
    url: str, *, retry_window: float, job_deserializer: Callable[[bytes], Any], queue_name: str
) -> ArqRedis:
    """A worker's pool for ``url``: JSON, commands retried for ``retry_window`` s, WATCH kept across drops.

    Built like arq's ``create_pool`` but without connecting: the worker connects on its first
    command (waiting up to ``retry_window`` seconds for Redis, or for Sentinel to name a primary).
    """
    return _client(ResilientArqRedis, url, retry_window, job_deserializer, queue_name)


async def refuse_cluster(redis: ArqRedis, url: str) -> None:
    """Raise :class:`ConfigError` in one line when ``redis`` is a Redis Cluster node.

    arq's client talks to one server; on a cluster of several nodes a job's keys and its queue
    live on different nodes, and every command for a key elsewhere fails with ``MOVED``.
    """
    info = await redis.info("cluster")
    if str(info.get("cluster_enabled", 0)) == "1":
        raise _config_error(
            url,
            "is a Redis Cluster node; eventworker runs on arq, which has no Redis Cluster support:"
            " use one Redis server, or a primary with replicas under Sentinel (redis+sentinel://)",
        )


async def _first_ping(redis: ArqRedis) -> None:
    for attempt in range(1, _FIRST_PING_TRIES + 1):
        try:
            await redis.ping()
            return
        except UNAVAILABLE:
            if attempt == _FIRST_PING_TRIES:
                raise
            await asyncio.sleep(_FIRST_PING_DELAY_S)


async def connect(
    url: str, job_deserializer: Callable[[bytes], Any] | None = None, retry_window: float = 0.0
) -> ArqRedis:
    """A connected ArqRedis pool for ``url`` that speaks JSON; see :func:`command_retry` for ``retry_window``.

    Refuses a Redis Cluster node (:func:`refuse_cluster`).
    """
    job_deserializer = job_deserializer or deserialize
    if url == MEMORY_URL:
        return memory_pool(job_deserializer)
    redis = _client(ArqRedis, url, retry_window, job_deserializer)
    try:
        await _first_ping(redis)
        await refuse_cluster(redis, url)
    except BaseException:
        await redis.aclose(close_connection_pool=True)
        raise
    return redis
