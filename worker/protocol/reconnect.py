"""Connections that ride out a Redis restart or failover: the handshake retried, WATCH kept across drops.

:class:`ResilientArqRedis` is the worker's client (``worker.protocol.redis.worker_pool``): its
connections retry their whole handshake (:class:`_RetriedHandshake`) and its transactions are
:class:`ReconnectingPipeline`, whose WATCH survives a lost connection and whose claim of a job is
read back when the reply to ``EXEC`` was lost. Both work on a plain connection pool and on a
Sentinel-managed one, where reconnecting also asks the sentinels where the primary is now.
"""

from __future__ import annotations

import uuid
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from redis.asyncio.client import Pipeline, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, WatchError

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
