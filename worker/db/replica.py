"""Heavy reads on a streaming replica (``DATABASE_READ_URL``), while it keeps up with the primary.

Exports, ``stats``, ``status`` and the dashboard only read, so they may run on a hot standby and
spare the primary; ingestion, rollups, retention and handlers write and stay on ``DATABASE_URL``.
A :class:`ReadRouter` opens both engines on demand and, before each round of reads, measures
how far the replica is behind (:func:`measure_lag`): one that is further behind than
``EVENTWORKER_READ_REPLICA_MAX_LAG`` seconds, or that cannot be reached, is passed over for the
primary, with a ``replica.bypassed`` log line.

The lag is PostgreSQL's usual measure, ``now() - pg_last_xact_replay_timestamp()``, counted only
while the replica has received WAL it has not replayed yet, or is cut off from a primary that has
written more (an idle primary sends nothing, and a replica that has replayed everything is not
behind however old its last transaction is); and the bytes of WAL the primary has written that the
replica has not replayed yet.

A long read on a replica can be cancelled by a "conflict with recovery" when the primary removes
rows the read still sees; the replica needs ``hot_standby_feedback = on`` (or a long
``max_standby_streaming_delay``): docs/deploying.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import text

from worker.config import Settings
from worker.db.engine import Database
from worker.db.failures import is_connection_error
from worker.errors import ConfigError
from worker.logging import get_logger

log = get_logger("eventworker.database")

#: On the replica: is it a standby, where has it replayed to, has it received WAL it has not replayed
#: yet, is it streaming from a primary, and how old is the last transaction it replayed.
_REPLICA_STATE: Final = text(
    "SELECT pg_is_in_recovery() AS standby,"
    " pg_last_wal_replay_lsn()::text AS replayed,"
    " coalesce(pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn(), false) AS pending,"
    " EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming') AS streaming,"
    " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_age_s"
)
#: On the primary: where its WAL ends.
_PRIMARY_WAL: Final = text("SELECT pg_current_wal_lsn()::text")


def lsn_bytes(lsn: str) -> int:
    """A ``pg_lsn`` as text (``16/B374D848``) as a byte position."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass(frozen=True, slots=True)
class ReplicaLag:
    """How far the read replica is behind, and whether reads go to it."""

    standby: bool
    """False: DATABASE_READ_URL is not a standby (a promoted replica, or a primary)."""
    seconds: float
    """``now() - pg_last_xact_replay_timestamp()`` while it is behind, else 0."""
    bytes_behind: int | None
    """WAL the primary wrote that the replica has not replayed; None if the primary was not asked."""
    used: bool = True
    """Whether the reads went to the replica (False: bypassed for the primary)."""
    reason: str | None = None
    """Why it was bypassed."""

    def bypassed(self, reason: str) -> ReplicaLag:
        return ReplicaLag(self.standby, self.seconds, self.bytes_behind, used=False, reason=reason)


async def measure_lag(replica: Database, primary: Database | None) -> ReplicaLag:
    """Ask the replica (and, for the bytes behind, the primary) how far behind the replica is.

    A primary that cannot be reached only leaves the bytes unknown: the replica's reads do not need it.
    """
    async with replica.engine.connect() as connection:
        state = (await connection.execute(_REPLICA_STATE)).one()
    behind = None
    if primary is not None and state.replayed is not None:
        try:
            async with primary.engine.connect() as connection:
                written = await connection.scalar(_PRIMARY_WAL)
            behind = max(0, lsn_bytes(str(written)) - lsn_bytes(state.replayed))
        except Exception as exc:
            if not is_connection_error(exc):
                raise
    # Behind by as long as its last replayed commit is old: while it has received WAL it has not replayed
    # yet, or while it is cut off from a primary that has written more. (A streaming replica is always a
    # few bytes behind a primary that writes; that alone is not lag.)
    cut_off = bool(behind) and not state.streaming
    seconds = float(state.replay_age_s or 0.0) if state.pending or cut_off else 0.0
    return ReplicaLag(standby=bool(state.standby), seconds=seconds, bytes_behind=behind)


class ReadRouter:
    """The database heavy reads go to: the replica while it keeps up, else the primary.

    Engines are opened when first needed and kept until :meth:`dispose` (the dashboard reads
    again and again through one router).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._primary: Database | None = None
        self._replica: Database | None = None

    @property
    def primary(self) -> Database:
        if self._primary is None:
            self._primary = Database.from_settings(self.settings)
        return self._primary

    def _replica_database(self) -> Database:
        if self._replica is None:
            self._replica = Database.from_settings(self.settings, replica=True)
        return self._replica

    async def choose(self) -> tuple[Database, ReplicaLag | None]:
        """The database for the next reads, and the replica's lag (None without DATABASE_READ_URL)."""
        if self.settings.database_read_url is None:
            return self.primary, None
        max_lag = self.settings.read_replica_max_lag
        try:
            lag = await measure_lag(self._replica_database(), self.primary)
        except ConfigError:
            raise  # a refused certificate or password: no fallback hides a wrong setting
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            reason = f"unreachable ({type(exc).__name__})"
            log.warning("replica.bypassed", reason=reason, max_lag_s=max_lag)
            return self.primary, ReplicaLag(False, 0.0, None, used=False, reason=reason)
        if lag.seconds > max_lag:
            reason = f"{lag.seconds:.1f} s behind, more than EVENTWORKER_READ_REPLICA_MAX_LAG={max_lag:g}"
            log.warning(
                "replica.bypassed", reason=reason, lag_s=round(lag.seconds, 3), bytes_behind=lag.bytes_behind
            )
            return self.primary, lag.bypassed(reason)
        return self._replica_database(), lag

    async def dispose(self) -> None:
        """Close both engines' connections."""
        for database in (self._replica, self._primary):
            if database is not None:
                await database.dispose()
        self._primary = self._replica = None
