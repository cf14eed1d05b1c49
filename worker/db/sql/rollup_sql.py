"""All SQL of the rollups: the checkpoint, which new events a run may read, their counts, the upsert.

``jobs.rollup`` calls these in one transaction per run: :func:`lock_checkpoint`,
:func:`safe_range`, :func:`count_range`, :func:`upsert_rollups`, :func:`move_checkpoint`.
A crash anywhere before the commit leaves rollups and checkpoint as they were.

Counting happens on the server: :func:`count_range` is a ``GROUP BY`` returning one row per
(bucket size, bucket, type, source), so only the groups cross the wire, not the events. Its
buckets are exactly :func:`worker.domain.rollups.bucket_start`'s, for every storable time (years 1 to
9999, before 1970, the last microsecond of a bucket; see :func:`_bucket_start_sql`), and types
and sources are told apart byte for byte on every database. The check (``jobs.rollup.verify``)
does not reuse that SQL: it reads the covered rows (:func:`covered_events`) and counts them
with :func:`worker.domain.rollups.count_events`, so the job and its check are independent code.

Which rows are new, and where is it safe to read up to
-------------------------------------------------------
The trap: ``seq`` is taken when a row is inserted, but the row becomes visible when its
transaction commits. With several workers ingesting at once, seq 41 can commit after seq 42;
a run that sees 42 and stores "done up to 42" never counts 41. So each database gets a
checkpoint it can keep exactly (:func:`safe_range`):

PostgreSQL: a transaction horizon, exact.
    Each event row records the id of the transaction that inserted it (``events.txid``, a
    server default of ``pg_current_xact_id()``). A run reads ``xmin`` of its snapshot
    (``pg_snapshot_xmin(pg_current_snapshot())``): every transaction with a lower id has
    finished, so no row with ``txid < xmin`` can ever appear later. The run counts the rows
    with ``old <= txid < xmin`` and moves the checkpoint to ``xmin``. The transaction runs in
    REPEATABLE READ, where ``pg_current_snapshot()`` is the transaction's own snapshot: the
    horizon and the rows come from one snapshot. Rows of a transaction still running wait
    for a later run, and none is skipped.
SQLite: a ``seq`` high-water mark, exact.
    One writer at a time: a row's transaction commits before the next writer can take a
    seq, so rows become visible in seq order. A run takes the write lock first (see
    :func:`lock_checkpoint`) and counts ``old < seq <= max(seq)``.
MySQL/MariaDB: a ``seq`` high-water mark with a settle time, a bounded-time guarantee.
    InnoDB gives no horizon, so a run trusts a seq only once it is old enough: the upper
    bound is the highest seq among rows received more than ``settle`` seconds ago
    (``rollup_settle_seconds``, default ``2 x job_timeout + 10``). Why that is safe: row R
    was received (``received_at``, taken before its transaction began) before ``now - settle``,
    so R's insert ran before ``now - settle + job_timeout`` (the job runner ends every job
    within ``job_timeout``). A lower seq S was taken before R's, so S's insert ran earlier
    still, and S's transaction ended before ``now - settle + 2 x job_timeout``, which with the
    default is ten seconds ago: S is committed and visible. The guarantee holds as long as
    no ingest transaction outlives ``job_timeout`` and worker clocks agree to within the
    spare seconds; a transaction held open longer (by hand, say) can still be skipped.
    Events appear in rollups ``settle`` seconds after they are received.

Overlapping runs
----------------
:func:`lock_checkpoint` locks the checkpoint row (``SELECT ... FOR UPDATE``; SQLite's one
write lock), so runs take turns, and :func:`move_checkpoint` moves it only from the position
the run started at, raising :class:`~worker.errors.CheckpointMoved` otherwise. On PostgreSQL
a run whose snapshot predates a concurrent run's commit fails with a serialization failure
(SQLSTATE 40001) at the lock instead: it rolls back, having counted nothing.

Rows per run are bounded (:func:`safe_range` ``limit``), whatever the transactions that stored
them. On PostgreSQL the checkpoint is then a pair (:class:`Position`): a transaction id and a
``seq`` in that transaction. A transaction larger than the limit (a backfill, a conversion: five
million rows in one) is read in parts along ``seq``: once its id is below the horizon it has
committed, so its rows are all visible and no part of it can appear later. The ``seq`` is kept in
a second checkpoint row (:data:`CHECKPOINT_SEQ`), moved with the first in the run's transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CursorResult,
    Select,
    Table,
    Text,
    and_,
    delete,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from worker.db.dialect import dialect_name, insert_ignoring_duplicates
from worker.db.interrupt import raise_if_cancelled
from worker.db.models import Checkpoint, Event, Rollup
from worker.db.types import UtcDateTime
from worker.domain.rollups import BUCKET_SECONDS, EventTimes, RollupKey
from worker.errors import CheckpointMoved

#: The checkpoint row the rollups keep.
CHECKPOINT: Final = "rollups"
#: PostgreSQL: the last ``seq`` counted of the transaction at :data:`CHECKPOINT` (0: none of it).
CHECKPOINT_SEQ: Final = "rollups.seq"
#: Where a new (or rebuilt) checkpoint starts: before every seq and every transaction id.
INITIAL_POSITION: Final = 0

EVENTS: Table = Event.__table__  # type: ignore[assignment]
ROLLUPS: Table = Rollup.__table__  # type: ignore[assignment]
CHECKPOINTS: Table = Checkpoint.__table__  # type: ignore[assignment]

#: Bucket rows per upsert statement: a cancelled run stops after the batch in flight (about 0.1 s).
UPSERT_BATCH_ROWS: Final = 5_000
#: SQL names of the bucket sizes, for date_trunc and DATE_FORMAT.
_PG_UNITS = {60: "minute", 3600: "hour"}
#: asyncpg writes Python's first and last moments (0001-01-01 00:00 and 9999-12-31 23:59:59.999999
#: UTC) as -infinity and infinity, and reads those back as the moments: buckets do the same. Text
#: literals, not parameters, which asyncpg would turn into the infinities again.
_PG_FIRST: Final[ColumnElement[Any]] = literal_column("timestamptz '0001-01-01 00:00:00+00'")
_PG_LAST: Final[ColumnElement[Any]] = literal_column("timestamptz '9999-12-31 23:59:59.999999+00'")
_MYSQL_FORMATS = {60: "%Y-%m-%d %H:%i:00", 3600: "%Y-%m-%d %H:00:00"}
#: SQLite stores SQLAlchemy's ``YYYY-MM-DD HH:MM:SS.ffffff``: a bucket is a prefix plus zeros.
_SQLITE_PREFIXES = {60: (16, ":00.000000"), 3600: (13, ":00:00.000000")}


@dataclass(frozen=True, slots=True)
class Position:
    """Where the rollups have counted up to.

    PostgreSQL: every row whose transaction id is below ``at``, and the rows of transaction ``at``
    up to ``seq`` (0: none of them). Elsewhere: every row with a ``seq`` up to ``at``; ``seq`` is 0.
    """

    at: int
    seq: int = 0


@dataclass(frozen=True, slots=True)
class ReadRange:
    """The events one run reads, and where the checkpoint goes once they are counted.

    PostgreSQL: rows with ``start <= txid < end`` but for the rows of ``start`` up to ``start_seq``;
    with ``end_seq`` set, a part of the one transaction ``start == end``: its rows with
    ``start_seq < seq <= end_seq``. Elsewhere: rows with ``start < seq <= end``.
    ``more`` is true when the range was cut at the row limit and newer safe rows remain.
    """

    start: int
    end: int
    more: bool
    start_seq: int = 0
    end_seq: int = 0

    @property
    def position(self) -> Position:
        """The checkpoint once these rows are counted."""
        return Position(self.end, self.end_seq)


async def ensure_checkpoint(session: AsyncSession, now: datetime) -> None:
    """Create the rollups checkpoint at :data:`INITIAL_POSITION` unless it exists; safe when racing.

    Run it in a transaction of its own, before the run's: creating the row inside a run would
    make two first runs deadlock on MySQL (both hold a shared lock on the row, both want it
    exclusively) and fail on PostgreSQL REPEATABLE READ.
    """
    rows = [
        {"name": name, "position": INITIAL_POSITION, "updated_at": now}
        for name in (CHECKPOINT, CHECKPOINT_SEQ)
    ]
    await insert_ignoring_duplicates(session, CHECKPOINTS, rows, ("name",))


async def _take_sqlite_write_lock(session: AsyncSession) -> None:
    # pysqlite runs a SELECT outside any transaction and opens one only at the first write; writing
    # first takes SQLite's single write lock now, so everything after is one transaction and
    # other writers (ingestion, another run) wait for its end.
    await session.execute(
        update(CHECKPOINTS).where(CHECKPOINTS.c.name == CHECKPOINT).values(position=CHECKPOINTS.c.position)
    )


async def _seq_in_transaction(session: AsyncSession) -> int:
    """The :data:`CHECKPOINT_SEQ` row (0 when missing: a checkpoint older than the row)."""
    seq = await session.scalar(select(CHECKPOINTS.c.position).where(CHECKPOINTS.c.name == CHECKPOINT_SEQ))
    return 0 if seq is None else int(seq)


async def lock_checkpoint(session: AsyncSession) -> Position:
    """Lock the rollups checkpoint for this transaction and return its position.

    A concurrent run waits here until this one ends. Call :func:`ensure_checkpoint` first.
    """
    if dialect_name(session) == "sqlite":
        await _take_sqlite_write_lock(session)
    position = await session.scalar(
        select(CHECKPOINTS.c.position).where(CHECKPOINTS.c.name == CHECKPOINT).with_for_update()
    )
    if position is None:
        raise LookupError(f"no checkpoint {CHECKPOINT!r}: call ensure_checkpoint first")
    return Position(int(position), await _seq_in_transaction(session))


async def read_checkpoint(session: AsyncSession) -> Position | None:
    """The rollups checkpoint's position (None before the first run), consistent with what follows.

    PostgreSQL and MySQL read it in the :func:`transaction`'s snapshot; SQLite takes the write
    lock, as a SELECT there would otherwise not be part of the transaction.
    """
    if dialect_name(session) == "sqlite":
        await _take_sqlite_write_lock(session)
    position = await session.scalar(select(CHECKPOINTS.c.position).where(CHECKPOINTS.c.name == CHECKPOINT))
    return None if position is None else Position(int(position), await _seq_in_transaction(session))


async def safe_range(
    session: AsyncSession, position: Position, *, limit: int, settled_before: datetime
) -> ReadRange:
    """The new events after checkpoint ``position`` that are safe to count now, ``limit`` at most.

    ``settled_before`` matters on MySQL/MariaDB only: rows received after it may still have
    lower seqs in flight (see the module docstring).
    """
    if dialect_name(session) == "postgresql":
        return await _transaction_range(session, position, limit)
    start = position.at
    seq = EVENTS.c.seq
    newer = [seq > start]
    if dialect_name(session) == "mysql":
        newer.append(EVENTS.c.received_at < settled_before)
    upper = await session.scalar(select(func.max(seq)).where(*newer))
    if upper is None:
        return ReadRange(start, start, more=False)
    last = await session.scalar(
        select(seq).where(seq > start, seq <= upper).order_by(seq).offset(limit - 1).limit(1)
    )
    if last is not None and last < upper:
        return ReadRange(start, int(last), more=True)
    return ReadRange(start, int(upper), more=False)


def _snapshot_xmin() -> ColumnElement[int]:
    """The transaction horizon: every transaction id below it has committed or aborted."""
    xmin = func.pg_snapshot_xmin(func.pg_current_snapshot())
    return sql_cast(sql_cast(xmin, Text), BigInteger)


async def _part_of(session: AsyncSession, transaction: int, after_seq: int, limit: int) -> ReadRange | None:
    """The next ``limit`` rows of one committed transaction after ``after_seq``, if more than that remain.

    Along the ``seq`` primary key; the range ends before the first row left out, so what remains
    is never empty and the run after this one moves on past the transaction.
    """
    seq, txid = EVENTS.c.seq, EVENTS.c.txid
    cut = await session.scalar(
        select(seq).where(txid == transaction, seq > after_seq).order_by(seq).offset(limit).limit(1)
    )
    if cut is None:
        return None
    return ReadRange(transaction, transaction, more=True, start_seq=after_seq, end_seq=int(cut) - 1)


async def _transaction_range(session: AsyncSession, position: Position, limit: int) -> ReadRange:
    txid = EVENTS.c.txid
    horizon = await session.scalar(select(_snapshot_xmin()))
    if horizon is None:  # pragma: no cover - PostgreSQL always has a snapshot
        raise RuntimeError("pg_current_snapshot() returned no xmin")
    start = position.at
    if position.seq:  # a transaction counted in part: its next part, or the rest of it alone
        part = await _part_of(session, start, position.seq, limit)
        return part or ReadRange(start, start + 1, more=True, start_seq=position.seq)
    in_range = (txid >= start, txid < horizon)
    first = await session.scalar(select(func.min(txid)).where(*in_range))
    if first is None:
        return ReadRange(start, horizon, more=False)
    # The transaction of the row just past the limit starts the next run, unless it is the first
    # transaction in range: then that one transaction is bigger than the limit and is read in parts.
    cut = await session.scalar(select(txid).where(*in_range).order_by(txid).offset(limit).limit(1))
    if cut is not None and cut == first:
        part = await _part_of(session, int(first), 0, limit)
        assert part is not None, "a transaction past the row limit has a row past the limit"
        return part
    if cut is None:
        return ReadRange(start, horizon, more=False)
    return ReadRange(start, int(cut), more=True)


def _in_range(dialect: str, read: ReadRange) -> tuple[ColumnElement[bool], ...]:
    txid, seq = EVENTS.c.txid, EVENTS.c.seq
    if dialect != "postgresql":
        return seq > read.start, seq <= read.end
    if read.end_seq:  # a part of one transaction: along the seq primary key
        return txid == read.start, seq > read.start_seq, seq <= read.end_seq
    if read.start_seq:
        return txid >= read.start, txid < read.end, or_(txid > read.start, seq > read.start_seq)
    return txid >= read.start, txid < read.end


def _bucket_start_sql(dialect: str, moment: ColumnElement[Any], seconds: int) -> ColumnElement[datetime]:
    """``moment`` cut to its bucket in SQL: :func:`worker.domain.rollups.bucket_start`, exactly,
    for years 1 to 9999.

    Calendar fields rather than arithmetic on seconds, so nothing is rounded or overflows:
    PostgreSQL truncates the UTC wall time; MySQL formats the time without its seconds and
    reads that back; SQLite stores SQLAlchemy's text (``YYYY-MM-DD HH:MM:SS.ffffff``, which
    sorts and cuts like the time), so a bucket is a prefix of it. SQLite's date functions are
    not used: they keep milliseconds only and give NULL from 9999-12-31 23:59:59.9995 on.
    """
    expression: ColumnElement[Any]
    if dialect == "postgresql":
        utc = func.timezone("UTC", func.greatest(func.least(moment, _PG_LAST), _PG_FIRST))
        expression = func.timezone("UTC", func.date_trunc(_PG_UNITS[seconds], utc))
    elif dialect == "mysql":
        expression = sql_cast(func.date_format(moment, _MYSQL_FORMATS[seconds]), mysql.DATETIME(fsp=6))
    elif dialect == "sqlite":
        length, zeros = _SQLITE_PREFIXES[seconds]
        expression = func.substr(moment, 1, length).concat(zeros)
    else:
        raise NotImplementedError(f"no bucket expression for dialect {dialect!r}")
    return type_coerce(expression, UtcDateTime())


def _exact_type_key(dialect: str) -> list[ColumnElement[Any]]:
    """What else to group by so that types are told apart byte for byte.

    MySQL compares ``type`` case-insensitively and without trailing spaces, which would merge
    ``"a"``, ``"A"`` and ``"a "``; its bytes keep them apart (grouping by both gives the groups of
    the bytes). ``source`` has a binary collation there, and the other databases compare bytes.
    """
    return [sql_cast(EVENTS.c.type, mysql.BINARY()).label("type_key")] if dialect == "mysql" else []


def _grouped(dialect: str, read: ReadRange, seconds: int) -> Select[Any]:
    """Counts of the events in ``read`` by (bucket, type, source), for one bucket size."""
    moment = func.coalesce(EVENTS.c.time, EVENTS.c.received_at)
    # A subquery whose every column is a key, so that GROUP BY names the bucket rather than
    # repeating its expression (its bound parameters would make it another expression).
    events = (
        select(
            _bucket_start_sql(dialect, moment, seconds).label("bucket_start"),
            EVENTS.c.type,
            EVENTS.c.source,
            *_exact_type_key(dialect),
        )
        .where(*_in_range(dialect, read))
        .subquery()
    )
    return select(
        literal_column(str(int(seconds))).label("bucket_seconds"),
        events.c.bucket_start,
        events.c.type,
        events.c.source,
        func.count().label("count"),
    ).group_by(*events.c)


async def count_range(session: AsyncSession, read: ReadRange) -> Counter[RollupKey]:
    """The events in ``read`` counted per bucket of every size in ``BUCKET_SECONDS``, by the database.

    Gives what :func:`worker.domain.rollups.count_events` gives for the same rows; memory and traffic
    grow with the number of buckets, not of events.
    """
    dialect = dialect_name(session)
    statement = union_all(*(_grouped(dialect, read, seconds) for seconds in BUCKET_SECONDS))
    counts: Counter[RollupKey] = Counter()
    for seconds, start, type_, source, count in await session.execute(statement):
        counts[RollupKey(int(seconds), start, type_, source)] += int(count)
    return counts


async def covered_events(
    session: AsyncSession, up_to: Position | None, page_size: int
) -> AsyncGenerator[Sequence[EventTimes]]:
    """Yield (type, source, time, received_at) of the events checkpoint ``up_to`` covers (None: all).

    For the check, which counts them in Python. Pages of ``page_size`` rows in ``seq`` order, each
    a statement of its own (keyset on ``seq``): memory holds one page on every driver (asyncmy's
    cursor would buffer the whole table), and nothing stays open on the session between pages.
    In the :func:`transaction` of the check all pages read one snapshot.
    """
    c = EVENTS.c
    covered: list[ColumnElement[bool]] = []
    if up_to is not None and dialect_name(session) != "postgresql":
        covered.append(c.seq <= up_to.at)
    elif up_to is not None:
        below = c.txid < up_to.at
        covered.append(or_(below, and_(c.txid == up_to.at, c.seq <= up_to.seq)) if up_to.seq else below)
    after = 0  # seq starts at 1
    while True:
        page = (
            await session.execute(
                select(c.seq, c.type, c.source, c.time, c.received_at)
                .where(*covered, c.seq > after)
                .order_by(c.seq)
                .limit(page_size)
            )
        ).all()
        if not page:
            return
        yield [(type_, source, time, received_at) for _, type_, source, time, received_at in page]
        if len(page) < page_size:
            return
        after = page[-1][0]


async def upsert_rollups(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> int:
    """Add each row's ``count`` to its bucket, creating the bucket if new; return how many rows.

    Rows must have distinct keys (as :func:`worker.domain.rollups.rollup_rows` gives them):
    PostgreSQL refuses to update one row twice in one statement.
    """
    if not rows:
        return 0
    dialect = dialect_name(session)
    if dialect in {"postgresql", "sqlite"}:
        insert = postgresql.insert(ROLLUPS) if dialect == "postgresql" else sqlite.insert(ROLLUPS)
        statement: Any = insert.on_conflict_do_update(
            index_elements=[ROLLUPS.c.bucket_seconds, ROLLUPS.c.bucket_start, ROLLUPS.c.series],
            set_={"count": ROLLUPS.c.count + insert.excluded.count},
        )
    elif dialect == "mysql":
        mysql_insert = mysql.insert(ROLLUPS)
        statement = mysql_insert.on_duplicate_key_update(count=ROLLUPS.c.count + mysql_insert.inserted.count)
    else:
        raise NotImplementedError(f"no rollup upsert for dialect {dialect!r}")
    for first in range(0, len(rows), UPSERT_BATCH_ROWS):
        await session.execute(statement, list(rows[first : first + UPSERT_BATCH_ROWS]))
        raise_if_cancelled()  # asyncpg's executemany swallows a cancellation (worker.db.interrupt)
    return len(rows)


async def move_checkpoint(
    session: AsyncSession, expected: Position, position: Position, now: datetime
) -> None:
    """Move the checkpoint from ``expected`` to ``position``; raise CheckpointMoved if it is elsewhere."""
    for name, old, new in (
        (CHECKPOINT, expected.at, position.at),
        (CHECKPOINT_SEQ, expected.seq, position.seq),
    ):
        if name == CHECKPOINT_SEQ and old == new == 0:
            continue  # never in a transaction's middle (every run but PostgreSQL's, nearly every one there)
        result = await session.execute(
            update(CHECKPOINTS)
            .where(CHECKPOINTS.c.name == name, CHECKPOINTS.c.position == old)
            .values(position=new, updated_at=now)
        )
        if cast(CursorResult[Any], result).rowcount != 1:
            raise CheckpointMoved(name, old)


async def delete_all_rollups(session: AsyncSession) -> int:
    """Empty the rollups table inside the transaction (not TRUNCATE: MySQL would commit at once)."""
    result = await session.execute(delete(ROLLUPS))
    return int(cast(CursorResult[Any], result).rowcount)


async def stored_rollups(session: AsyncSession) -> dict[RollupKey, int]:
    """The rollups table as counts by key."""
    r = ROLLUPS.c
    rows = await session.execute(select(r.bucket_seconds, r.bucket_start, r.type, r.source, r.count))
    return {RollupKey(int(s), start, t, src): int(n) for s, start, t, src, n in rows}
