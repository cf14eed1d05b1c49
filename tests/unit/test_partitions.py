"""Partition arithmetic: aligned bounds per interval, names, gaps between partitions of other sizes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker.domain.partitions import (
    LEGACY,
    Partition,
    ahead,
    cutover,
    expired,
    floor,
    following,
    holding,
    partition_name,
    slot,
)


def at(text: str) -> datetime:
    return (
        datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else datetime.fromisoformat(text)
    )


def part(lower: str | None, upper: str) -> Partition:
    low = None if lower is None else at(lower)
    return Partition(upper=at(upper), lower=low, name=LEGACY if low is None else partition_name(low))


@pytest.mark.parametrize(
    ("moment", "interval", "start", "end"),
    [
        ("2026-12-05 13:45:10", "hour", "2026-12-05 13:00", "2026-12-05 14:00"),
        ("2026-12-05 13:45:10", "day", "2026-12-05 00:00", "2026-12-06 00:00"),
        ("2026-12-05 13:45:10", "week", "2026-11-30 00:00", "2026-12-07 00:00"),  # from Monday
        ("2026-12-05 13:45:10", "month", "2026-12-01 00:00", "2027-01-01 00:00"),
        ("2026-02-10 00:00:00", "month", "2026-02-01 00:00", "2026-03-01 00:00"),
        ("2026-12-31 23:59:59.999999", "day", "2026-12-31 00:00", "2027-01-01 00:00"),
        ("2026-12-06 01:30:00+02:00", "day", "2026-12-05 00:00", "2026-12-06 00:00"),  # in UTC
    ],
)
def test_an_interval_is_aligned_in_utc(moment, interval, start, end):
    """floor and following give the UTC-aligned interval around a time, whatever its offset."""
    begin = floor(at(moment), interval)
    assert (begin, following(begin, interval)) == (at(start), at(end))
    assert begin.tzinfo == UTC


@pytest.mark.parametrize(
    ("lower", "name"),
    [
        ("2026-12-05 00:00", "events_p20261205"),
        ("2026-12-05 13:00", "events_p20261205_1300"),
        ("2026-12-05 13:00:07.5", "events_p20261205_130007500000"),
    ],
)
def test_a_partition_is_named_for_where_it_starts(lower, name):
    """Names sort as the partitions do and say their start."""
    assert partition_name(at(lower)) == name


def test_names_are_those_of_utc_even_from_another_offset():
    """A start given in another offset is named in UTC."""
    assert partition_name(datetime(2026, 12, 5, 2, tzinfo=timezone(timedelta(hours=2)))) == "events_p20261205"


@pytest.mark.parametrize(
    ("moment", "existing", "lower", "upper"),
    [
        ("2026-12-05 10:00", [], "2026-12-05 00:00", "2026-12-06 00:00"),
        # A converted table's partition ends at its cut-over inside the day: the day starts there.
        ("2026-12-05 10:00", [(None, "2026-12-05 06:00")], "2026-12-05 06:00", "2026-12-06 00:00"),
        # Weekly partitions made before the interval became a day: the day ends where the week starts.
        (
            "2026-12-06 10:00",
            [("2026-12-06 12:00", "2026-12-13 12:00")],
            "2026-12-06 00:00",
            "2026-12-06 12:00",
        ),
        (
            "2026-12-05 10:00",
            [("2026-12-04 00:00", "2026-12-05 00:00")],
            "2026-12-05 00:00",
            "2026-12-06 00:00",
        ),
    ],
)
def test_a_new_partition_fills_the_gap_around_its_time(moment, existing, lower, upper):
    """A slot is the aligned interval, clipped by its neighbours so that partitions never overlap."""
    made = slot(at(moment), "day", [part(*bounds) for bounds in existing])
    assert (made.lower, made.upper) == (at(lower), at(upper))
    assert made.holds(at(moment))


def test_a_time_that_has_a_partition_gets_no_slot():
    """Asking for a slot where a partition already is, is a mistake said aloud."""
    with pytest.raises(ValueError, match="already has a partition"):
        slot(at("2026-12-05 10:00"), "day", [part("2026-12-05 00:00", "2026-12-06 00:00")])


def test_partitions_ahead_cover_now_to_the_last_interval_with_no_gap():
    """ahead() names the missing partitions from now to count intervals past the current one."""
    existing = [part("2026-12-05 00:00", "2026-12-06 00:00"), part("2026-12-07 00:00", "2026-12-08 00:00")]
    made = ahead(at("2026-12-05 10:00"), "day", 3, existing)
    assert [p.name for p in made] == ["events_p20261206", "events_p20261208"]
    everything = sorted([*existing, *made])
    assert all(a.upper == b.lower for a, b in itertools.pairwise(everything))
    assert everything[-1].upper == at("2026-12-09 00:00")
    assert ahead(at("2026-12-05 10:00"), "day", 3, everything) == []


def test_a_converted_table_hands_over_at_a_boundary_at_least_an_hour_ahead():
    """The cut-over is the next interval boundary, or the one after when the next is within the hour."""
    assert cutover(at("2026-12-05 10:00"), "day") == at("2026-12-06 00:00")
    assert cutover(at("2026-12-05 23:30"), "day") == at("2026-12-07 00:00")
    assert cutover(at("2026-12-05 10:30"), "hour") == at("2026-12-05 12:00")


def test_only_partitions_wholly_past_the_cutoff_expire():
    """A partition holding any time at or after the cutoff stays; the legacy one too until its end."""
    partitions = [
        part(None, "2026-11-01 06:00"),
        part("2026-11-01 06:00", "2026-11-02 00:00"),
        part("2026-11-02 00:00", "2026-11-03 00:00"),
    ]
    assert [p.name for p in expired(partitions, at("2026-11-02 12:00"))] == [LEGACY, "events_p20261101_0600"]
    assert expired(partitions, at("2026-11-01 05:00")) == []
    assert holding(partitions, at("2026-11-02 23:59")) == partitions[2]
    assert holding(partitions, at("2026-11-03 00:00")) is None
