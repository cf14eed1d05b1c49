"""Rollups as pure logic: which bucket an event counts in, how rows become counts, how two tables differ.

No I/O here. ``jobs.rollup`` has the database count new events per bucket
(:func:`worker.db.sql.rollup_sql.count_range`, a ``GROUP BY`` giving what :func:`count_events`
gives) and hands :func:`rollup_rows` back to it to upsert. :func:`count_events` is the
reference: the ``verify`` command counts the events with it and compares the table through
:func:`differences`, and the tests hold the SQL to it on every database.

An event counts in the minute and the hour (UTC) of its own ``time``, or of
``received_at`` when it has none, so an event arriving late lands in the bucket it
belongs to. A series is the pair (type, source); its key in the table is a hash, because
the pair is too long to be part of a primary key on MySQL.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

#: Bucket sizes kept, in seconds: minutes and hours.
BUCKET_SECONDS: Final = (60, 3600)
#: Human names of the bucket sizes, for messages.
BUCKET_NAMES: Final = {60: "minute", 3600: "hour"}
#: Length of a series key (hex characters of a SHA-256): the ``rollups.series`` column.
SERIES_LENGTH: Final = 32

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

#: An event as a rollup reads it: (type, source, time, received_at).
EventTimes = tuple[str, str, datetime | None, datetime]


class RollupKey(NamedTuple):
    """One row of the rollups table, without its count."""

    bucket_seconds: int
    bucket_start: datetime
    type: str
    source: str


def bucket_time(time: datetime | None, received_at: datetime) -> datetime:
    """The moment an event is counted at: its own ``time``, else when it was received."""
    return received_at if time is None else time


def bucket_start(moment: datetime, seconds: int) -> datetime:
    """The start (UTC) of the ``seconds``-long bucket holding ``moment``, an aware datetime.

    Integer arithmetic on microseconds since the epoch: exact, also before 1970.
    """
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: rollups need aware times")
    micros = (moment - _EPOCH) // _MICROSECOND
    return _EPOCH + (micros - micros % (seconds * 1_000_000)) * _MICROSECOND


def series(type_: str, source: str) -> str:
    """The stable key of the series (type, source). NUL separates the parts: events cannot contain it."""
    return hashlib.sha256(f"{type_}\x00{source}".encode()).hexdigest()[:SERIES_LENGTH]


def count_events(rows: Iterable[EventTimes], into: Counter[RollupKey] | None = None) -> Counter[RollupKey]:
    """Add one count per bucket size for each event in ``rows`` to ``into`` (a new Counter if None)."""
    counts: Counter[RollupKey] = Counter() if into is None else into
    for type_, source, time, received_at in rows:
        moment = bucket_time(time, received_at)
        for seconds in BUCKET_SECONDS:
            counts[RollupKey(seconds, bucket_start(moment, seconds), type_, source)] += 1
    return counts


def events_counted(counts: Mapping[RollupKey, int]) -> int:
    """How many events ``counts`` holds: each is counted once per bucket size, so one size's sum."""
    return sum(count for key, count in counts.items() if key.bucket_seconds == BUCKET_SECONDS[0])


def rollup_rows(counts: Mapping[RollupKey, int]) -> list[dict[str, Any]]:
    """Rows for the rollups table, in primary-key order so that concurrent writers lock alike."""
    rows = [
        {
            "bucket_seconds": key.bucket_seconds,
            "bucket_start": key.bucket_start,
            "series": series(key.type, key.source),
            "type": key.type,
            "source": key.source,
            "count": count,
        }
        for key, count in counts.items()
        if count
    ]
    rows.sort(key=lambda row: (row["bucket_seconds"], row["bucket_start"], row["series"]))
    return rows


def settle_seconds(configured: float | None, job_timeout: float) -> float:
    """MySQL/MariaDB: how old a row must be before rollups trust every lower ``seq`` to be committed.

    An ingest transaction ends within ``job_timeout`` of its job's start (the job runner cancels
    it then); twice that plus ten seconds covers the insert that took the higher ``seq`` also
    starting late in its job, and clock differences between workers.
    """
    return configured if configured is not None else 2 * job_timeout + 10


@dataclass(frozen=True, slots=True)
class Difference:
    """A bucket whose stored count is not what the events say."""

    key: RollupKey
    expected: int
    actual: int

    def __str__(self) -> str:
        key = self.key
        name = BUCKET_NAMES.get(key.bucket_seconds, f"{key.bucket_seconds}s")
        return (
            f"{name} {key.bucket_start.isoformat()} type={key.type!r} source={key.source!r}:"
            f" events say {self.expected}, rollups say {self.actual}"
        )


def differences(expected: Mapping[RollupKey, int], actual: Mapping[RollupKey, int]) -> list[Difference]:
    """Every bucket where ``actual`` disagrees with ``expected`` (a missing bucket counts 0), sorted."""
    keys = sorted(expected.keys() | actual.keys())
    return [
        Difference(key, expected.get(key, 0), actual.get(key, 0))
        for key in keys
        if expected.get(key, 0) != actual.get(key, 0)
    ]
