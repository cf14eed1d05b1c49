"""Redis connections for arq: a real server from a URL, or the demo's in-process stand-in.

``memory://`` builds an ``ArqRedis`` on fakeredis, shared by everything in the one
process (the demo runs producer and worker side by side). Nothing here imports
SQLAlchemy, so producers can use it.

Every connection retries a command that meets an unreachable Redis (refused, reset, timed
out, still loading its data after a restart), reconnecting with back-off for up to a
*retry window*: a worker rides out a Redis restart without noticing, and a pooled
connection left stale by one is replaced on the first command. A worker's window is
``EVENTWORKER_REDIS_RETRY_WINDOW``; past it the error reaches arq and the worker exits, for
its supervisor to restart. A producer's own connection retries only once at this level:
:class:`~worker.protocol.producer.EventProducer` retries whole enqueues with its own back-off.

A worker's pool (:func:`worker_pool`) also keeps its optimistic transactions (WATCH ...
EXEC, how arq claims a job and enqueues a cron tick) alive across a reconnect; see
:class:`ReconnectingPipeline`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix
from redis.asyncio.client import Pipeline, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, WatchError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.protocol.serialization import deserialize, serialize

MEMORY_URL = "memory://"
_memory_server: Any = None

#: What an unreachable Redis raises: refused or reset (OSError), dropped or still loading its data
#: after a restart (redis-py's ConnectionError, BusyLoadingError among them), timed out.
UNAVAILABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

#: Back-off between reconnects within a retry window: 0.1 s, doubling, at most 2 s.
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 2.0


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
    """``url`` with its password (if any) replaced by ``***``, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


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


def redis_settings(url: str, retry_window: float = 0.0) -> RedisSettings:
    """arq settings for a redis://, rediss:// or unix:// URL: fail fast at connect, ride out restarts.

    ``retry_window``: seconds a command keeps reconnecting with back-off while Redis is unreachable.
    """
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 5
    settings.conn_retries = 3
    settings.retry_on_error = list(UNAVAILABLE)
    settings.retry = command_retry(retry_window)
    return settings


#: Reconnects a pipeline tries while watching before it gives the WatchError to its caller.
_REWATCH_ATTEMPTS = 5


class ReconnectingPipeline(Pipeline):
    """A pipeline whose WATCH survives a lost connection when nothing watched changed meanwhile.

    redis-py gives up a WATCH whose connection dropped (a Redis restart) by raising WatchError
    from the next read, which arq expects only from ``execute()``: a worker's poll loop died of it
    while claiming a job. Here the keys are WATCHed again on a new connection and every read made
    under the old WATCH is made again: if each reads the same, the transaction goes on as if the
    connection had never dropped; if not, ``execute()`` raises WatchError, which arq takes as "taken
    meanwhile" (the job is left to whoever took it, or tried again at the next poll).

    A drop during ``EXEC`` itself leaves its outcome unknown: Redis may have applied the
    transaction and lost only the reply. redis-py then raises WatchError, which for arq's claim
    of a job (``PSETEX arq:in-progress:<id>``) meant "taken by someone else" although this worker
    held the claim: nobody ran the job until the claim expired (job timeout + 15 s). So a claim
    is written with a value of its own (arq only checks that the key exists), and after such a
    drop it is read back: if it holds this claim's value, the transaction was applied and
    ``execute()`` returns as if the reply had arrived.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watched: tuple[Any, ...] = ()
        self._reads: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []
        self._changed = False
        self._dropped = False

    async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        watched, reads = self._watched, self._reads  # a drop resets the pipeline, and these with it
        try:
            result = await self._immediate(*args, **options)
        except WatchError:
            if not watched:
                raise
            self._watched, self._reads = watched, reads
            await self._watch_again()
            result = await self._immediate(*args, **options)
        if args[0] == "WATCH":
            self._watched += args[1:]
        elif self.watching:
            self._reads.append((args, dict(options), result))
        return result

    async def _watch_again(self) -> None:
        watched, reads = self._watched, self._reads
        for _ in range(_REWATCH_ATTEMPTS):
            try:
                await self._immediate("WATCH", *watched)
                for args, options, seen in reads:
                    if await self._immediate(*args, **options) != seen:
                        self._changed = True
            except WatchError:  # dropped again: the pipeline was reset once more
                self._watched, self._reads = watched, reads
                continue
            return
        raise WatchError(f"the connection dropped {_REWATCH_ATTEMPTS} times while watching")

    async def _immediate(self, *args: Any, **options: Any) -> Any:
        """redis-py's own immediate command, given a copy of ``options`` (unannotated there: the ignore)."""
        return await super().immediate_execute_command(*args, **dict(options))  # type: ignore[no-untyped-call]

    async def execute(self, raise_on_error: bool = True) -> Any:
        if self._changed:
            await self.reset()
            raise WatchError("a watched key changed while the connection was re-established")
        claim, self._dropped = self._mark_claim(), False
        try:
            return await super().execute(raise_on_error)
        except WatchError:
            if claim is None or not self._dropped:
                raise
            key, token = claim
            if await self._read_after_drop(key) != token.encode():
                raise
            return [True]  # applied: the reply of PSETEX, all arq reads

    def _mark_claim(self) -> tuple[str, str] | None:
        """If this transaction is arq's claim of a job, give its value a token of its own."""
        if not self.watching or len(self.command_stack) != 1:
            return None
        args, options = self.command_stack[0]
        if (
            len(args) != 4
            or str(args[0]).upper() != "PSETEX"
            or not str(args[1]).startswith(in_progress_key_prefix)
        ):
            return None
        token = f"1:{uuid.uuid4().hex}"
        self.command_stack[0] = ((*args[:3], token), options)
        return str(args[1]), token

    async def _read_after_drop(self, key: str) -> Any:
        """GET ``key`` through the pool, with its retries."""
        return await Redis(connection_pool=self.connection_pool).get(key)

    async def _disconnect_raise_reset(self, conn: Any, error: Exception) -> None:
        self._dropped = True
        await super()._disconnect_raise_reset(conn, error)

    async def reset(self) -> None:
        await super().reset()  # type: ignore[no-untyped-call]  # (redis-py leaves it unannotated)
        self._watched, self._reads, self._changed = (), [], False


#: No retry: one attempt.
_ONCE = Retry(NoBackoff(), 0)


class _Fatal(Exception):
    """Carries an error a reconnect must not retry (a refused password) through redis-py's Retry."""


class _RetriedHandshake(AbstractConnection):
    """A connection whose whole handshake is retried, not only its TCP connect.

    redis-py retries the TCP connect, but not the AUTH/SELECT that follows, nor does it retry a
    connection taken from the pool: a server dying right after accepting (a restart) raised
    ConnectionError straight out of arq's poll loop. A refused password is not retried.
    """

    async def connect(self) -> None:
        handshake, retry = super().connect, self.retry

        async def attempt() -> None:
            self.retry = _ONCE  # redis-py would retry the TCP connect alone, within our retry: not twice
            try:
                await handshake()  # type: ignore[no-untyped-call]  # (redis-py leaves it unannotated)
            except (AuthenticationError, AuthorizationError) as exc:
                raise _Fatal() from exc
            finally:
                self.retry = retry

        try:
            await retry.call_with_retry(attempt, lambda _error: self.disconnect())
        except _Fatal as fatal:
            raise fatal.__cause__ from None  # type: ignore[misc]  # always the refused password


_retried_classes: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _with_retried_handshake(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class`` (TCP, TLS or Unix socket) with :class:`_RetriedHandshake` mixed in."""
    if connection_class not in _retried_classes:
        name = f"Retried{connection_class.__name__}"
        _retried_classes[connection_class] = type(name, (_RetriedHandshake, connection_class), {})
    return _retried_classes[connection_class]


class ResilientArqRedis(ArqRedis):
    """arq's Redis client whose connections retry their handshake, with :class:`ReconnectingPipeline`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pool = self.connection_pool
        pool.connection_class = _with_retried_handshake(pool.connection_class)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return ReconnectingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def worker_pool(
    url: str, *, retry_window: float, job_deserializer: Callable[[bytes], Any], queue_name: str
) -> ArqRedis:
    """A worker's pool for ``url``: JSON, commands retried for ``retry_window`` s, WATCH kept across drops.

    Built like arq's ``create_pool`` but without connecting: the worker connects on its first
    command (waiting up to ``retry_window`` seconds for Redis).
    """
    settings = redis_settings(url, retry_window)
    return ResilientArqRedis(
        host=settings.host,
        port=settings.port,
        unix_socket_path=settings.unix_socket_path,
        db=settings.database,
        username=settings.username,
        password=settings.password,
        ssl=settings.ssl,
        ssl_keyfile=settings.ssl_keyfile,
        ssl_certfile=settings.ssl_certfile,
        ssl_cert_reqs=settings.ssl_cert_reqs,
        ssl_ca_certs=settings.ssl_ca_certs,
        ssl_ca_data=settings.ssl_ca_data,
        ssl_check_hostname=settings.ssl_check_hostname,
        socket_connect_timeout=settings.conn_timeout,
        retry=settings.retry,
        retry_on_timeout=settings.retry_on_timeout,
        retry_on_error=settings.retry_on_error,
        max_connections=settings.max_connections,
        encoding="utf8",
        job_serializer=serialize,
        job_deserializer=job_deserializer,
        default_queue_name=queue_name,
    )


async def connect(
    url: str, job_deserializer: Callable[[bytes], Any] | None = None, retry_window: float = 0.0
) -> ArqRedis:
    """An ArqRedis pool for ``url`` that speaks JSON; see :func:`redis_settings` for ``retry_window``."""
    job_deserializer = job_deserializer or deserialize
    if url == MEMORY_URL:
        return memory_pool(job_deserializer)
    return await create_pool(
        redis_settings(url, retry_window), job_serializer=serialize, job_deserializer=job_deserializer
    )
