"""Time partitions of ``events`` on PostgreSQL, the pure parts: their bounds, names, and which are due.

No database here. ``worker.db.sql.partition_sql`` reads the partitions that exist (each a
:class:`Partition`: a half-open range ``[lower, upper)`` of ``received_at``) and creates or
drops the ones these functions name.

A partition covers one *interval* (``hour``, ``day``, ``week`` from Monday, ``month``), aligned
in UTC: the ``day`` partition of 2026-12-05 is ``[2026-12-05 00:00, 2026-12-06 00:00)``. Where
partitions of another size already exist (the interval was changed, or the table was converted
and its old rows form one partition below a cut-over time), a new partition is the aligned
slot clipped to the gap around it, so that partitions never overlap and any time has a place.
The partition holding the rows of a converted table (:data:`LEGACY`) has no lower bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

Interval = Literal["hour", "day", "week", "month"]
INTERVALS: Final = ("hour", "day", "week", "month")
#: The partition a converted table's rows stay in, from no lower bound up to the cut-over time.
LEGACY: Final = "events_legacy"
#: Every other partition is called this and its lower bound (:func:`partition_name`).
PREFIX: Final = "events_p"
_FIXED: Final = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}


@dataclass(frozen=True, slots=True, order=True)
class Partition:
    """One partition: rows with ``lower <= received_at < upper`` (``lower`` None: no lower bound)."""

    upper: datetime
    lower: datetime | None
    name: str

    def holds(self, at: datetime) -> bool:
        """Whether a row received ``at`` belongs here."""
        return (self.lower is None or self.lower <= at) and at < self.upper


def floor(at: datetime, interval: Interval) -> datetime:
    """The start of the ``interval`` holding ``at``, in UTC."""
    at = at.astimezone(UTC)
    if interval == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "day":
        return day
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def following(start: datetime, interval: Interval) -> datetime:
    """The start of the interval after the one starting at ``start`` (an aligned time)."""
    if interval != "month":
        return start + _FIXED[interval]
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def partition_name(lower: datetime) -> str:
    """``events_p20261205``, or ``events_p20261205_1300`` when the partition starts within a day."""
    lower = lower.astimezone(UTC)
    name = f"{PREFIX}{lower:%Y%m%d}"
    if (lower.hour, lower.minute, lower.second, lower.microsecond) != (0, 0, 0, 0):
        name += f"_{lower:%H%M}" if (lower.second, lower.microsecond) == (0, 0) else f"_{lower:%H%M%S%f}"
    return name


def slot(at: datetime, interval: Interval, existing: Sequence[Partition]) -> Partition:
    """The partition to create for a row received ``at``, none of ``existing`` holding it.

    The aligned interval around ``at``, narrowed to the gap between its neighbours in ``existing``.
    """
    if any(partition.holds(at) for partition in existing):
        raise ValueError(f"{at.isoformat()} already has a partition")
    lower, upper = floor(at, interval), following(floor(at, interval), interval)
    for partition in existing:
        if partition.upper <= at:
            lower = max(lower, partition.upper)
        elif partition.lower is not None and partition.lower > at:
            upper = min(upper, partition.lower)
    return Partition(upper=upper, lower=lower, name=partition_name(lower))


def ahead(now: datetime, interval: Interval, count: int, existing: Sequence[Partition]) -> list[Partition]:
    """The partitions to make so that every time from ``now`` to ``count`` intervals past its own has one."""
    wanted: list[Partition] = []
    start = floor(now, interval)
    end = start
    for _ in range(count + 1):
        end = following(end, interval)
    at = now
    known = sorted(existing)
    while at < end:
        held = next((partition for partition in known if partition.holds(at)), None)
        if held is None:
            held = slot(at, interval, known)
            wanted.append(held)
            bisect.insort(known, held)
        at = held.upper
    return wanted


def expired(partitions: Sequence[Partition], cutoff: datetime) -> list[Partition]:
    """The partitions whose every row was received before ``cutoff``, oldest first."""
    return sorted(partition for partition in partitions if partition.upper <= cutoff)


def holding(partitions: Sequence[Partition], at: datetime) -> Partition | None:
    """The partition a row received ``at`` goes to, if there is one."""
    return next((partition for partition in partitions if partition.holds(at)), None)


#: A converted table's rows stay in one partition up to the first boundary at least this far ahead,
#: so that rows stored while the conversion runs still belong there.
CUTOVER_MARGIN: Final = timedelta(hours=1)


def cutover(now: datetime, interval: Interval) -> datetime:
    """Where a converted table's partition ends and the partitions of ``interval`` begin."""
    boundary = following(floor(now, interval), interval)
    while boundary < now + CUTOVER_MARGIN:
        boundary = following(boundary, interval)
    return boundary
