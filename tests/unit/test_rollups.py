"""Rollups as pure logic: bucket boundaries, series keys, counting, table rows and differences, as tables."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.domain.rollups import (
    BUCKET_SECONDS,
    Difference,
    RollupKey,
    bucket_start,
    bucket_time,
    count_events,
    differences,
    events_counted,
    rollup_rows,
    series,
    settle_seconds,
)


def utc(text: str) -> datetime:
    """An aware datetime from ISO text (UTC unless the text says otherwise)."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "seconds", "expected"),
    [
        ("2026-01-02T03:04:05.123456", 60, "2026-01-02T03:04:00"),
        ("2026-01-02T03:04:05.123456", 3600, "2026-01-02T03:00:00"),
        # Exactly on a boundary: the bucket starting there.
        ("2026-01-02T03:00:00", 60, "2026-01-02T03:00:00"),
        ("2026-01-02T03:00:00", 3600, "2026-01-02T03:00:00"),
        # The last microsecond of a bucket stays in it.
        ("2026-01-02T03:59:59.999999", 60, "2026-01-02T03:59:00"),
        ("2026-01-02T03:59:59.999999", 3600, "2026-01-02T03:00:00"),
        ("2026-12-31T23:59:59.999999", 3600, "2026-12-31T23:00:00"),
        # Other offsets are cut in UTC: 10:15+05:30 is 04:45Z.
        ("2026-01-02T10:15:30+05:30", 60, "2026-01-02T04:45:00"),
        ("2026-01-02T10:15:30+05:30", 3600, "2026-01-02T04:00:00"),
        ("2026-01-01T00:30:00-01:00", 3600, "2026-01-01T01:00:00"),
        # Before the epoch: floor, not truncation towards zero.
        ("1969-12-31T23:59:30.5", 60, "1969-12-31T23:59:00"),
        ("1969-12-31T23:00:00.000001", 3600, "1969-12-31T23:00:00"),
        ("0001-01-01T00:00:01", 3600, "0001-01-01T00:00:00"),
    ],
)
def test_bucket_start(moment, seconds, expected):
    """An event's bucket starts at its time floored to the bucket size, in UTC."""
    start = bucket_start(utc(moment), seconds)
    assert start == utc(expected)
    assert start.utcoffset() == timedelta(0)


def test_bucket_start_refuses_naive_times():
    """A time without a zone is refused rather than guessed."""
    with pytest.raises(ValueError, match="naive"):
        bucket_start(datetime(2026, 1, 2, 3, 4, 5), 60)


@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    st.sampled_from(BUCKET_SECONDS),
)
def test_bucket_start_holds_the_moment(moment, seconds):
    """Any moment lies in [start, start + size) of its bucket, and the start is on the UTC grid."""
    start = bucket_start(moment, seconds)
    assert start <= moment < start + timedelta(seconds=seconds)
    assert start.microsecond == 0
    assert (start.hour * 3600 + start.minute * 60 + start.second) % seconds == 0


@pytest.mark.parametrize(
    ("time", "received_at", "expected"),
    [
        ("2026-01-02T03:04:05", "2026-05-06T07:08:09", "2026-01-02T03:04:05"),  # late: its own time
        (None, "2026-05-06T07:08:09", "2026-05-06T07:08:09"),  # no time: when it arrived
        ("2027-01-01T00:00:00", "2026-05-06T07:08:09", "2027-01-01T00:00:00"),  # from the future: kept
    ],
)
def test_bucket_time(time, received_at, expected):
    """An event counts at its own time, or at its arrival when it has none."""
    assert bucket_time(time and utc(time), utc(received_at)) == utc(expected)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("com.example.A", "/s"), ("com.example.a", "/s")),  # case matters
        (("t", "/s"), ("t ", "/s")),  # trailing spaces matter
        (("ab", "c"), ("a", "bc")),  # the separator keeps the parts apart
        (("t", "/s"), ("/s", "t")),  # order matters
    ],
)
def test_series_tells_pairs_apart(a, b):
    """Different (type, source) pairs get different series keys."""
    assert series(*a) != series(*b)


def test_series_is_a_stable_32_character_hash():
    """The key is the first 32 hex digits of sha256(type NUL source): stable across processes and versions."""
    key = series("com.example.order", "/shop")
    assert key == hashlib.sha256(b"com.example.order\x00/shop").hexdigest()[:32]
    assert len(key) == 32
    assert series("com.example.order", "/shop") == key


T1 = utc("2026-01-02T03:04:05")
T1_LATER_SAME_MINUTE = utc("2026-01-02T03:04:59.999999")
T2_NEXT_MINUTE = utc("2026-01-02T03:05:00")
T3_NEXT_HOUR = utc("2026-01-02T04:00:00")
RECEIVED = utc("2026-06-01T12:34:56")
M1, M2, H1 = utc("2026-01-02T03:04"), utc("2026-01-02T03:05"), utc("2026-01-02T03:00")


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], {}),
        (
            [("t", "/s", T1, RECEIVED)],
            {RollupKey(60, M1, "t", "/s"): 1, RollupKey(3600, H1, "t", "/s"): 1},
        ),
        (
            [
                ("t", "/s", T1, RECEIVED),
                ("t", "/s", T1_LATER_SAME_MINUTE, RECEIVED),
                ("t", "/s", T2_NEXT_MINUTE, RECEIVED),
            ],
            {
                RollupKey(60, M1, "t", "/s"): 2,
                RollupKey(60, M2, "t", "/s"): 1,
                RollupKey(3600, H1, "t", "/s"): 3,
            },
        ),
        (
            [("t", "/s", T1, RECEIVED), ("u", "/s", T1, RECEIVED), ("t", "/r", T1, RECEIVED)],
            {
                RollupKey(60, M1, "t", "/s"): 1,
                RollupKey(60, M1, "u", "/s"): 1,
                RollupKey(60, M1, "t", "/r"): 1,
                RollupKey(3600, H1, "t", "/s"): 1,
                RollupKey(3600, H1, "u", "/s"): 1,
                RollupKey(3600, H1, "t", "/r"): 1,
            },
        ),
        (
            [("t", "/s", None, RECEIVED), ("t", "/s", T3_NEXT_HOUR, RECEIVED)],
            {
                RollupKey(60, utc("2026-06-01T12:34"), "t", "/s"): 1,
                RollupKey(3600, utc("2026-06-01T12:00"), "t", "/s"): 1,
                RollupKey(60, T3_NEXT_HOUR, "t", "/s"): 1,
                RollupKey(3600, T3_NEXT_HOUR, "t", "/s"): 1,
            },
        ),
    ],
    ids=["nothing", "one", "same-minute", "series-apart", "no-time-and-next-hour"],
)
def test_count_events(rows, expected):
    """Each event adds one to its minute and one to its hour, per (type, source)."""
    assert count_events(rows) == Counter(expected)


def test_count_events_adds_to_what_it_is_given():
    """Chunks of a stream add up in one Counter."""
    counts = count_events([("t", "/s", T1, RECEIVED)])
    same = count_events([("t", "/s", T1_LATER_SAME_MINUTE, RECEIVED)], counts)
    assert same is counts
    assert counts[RollupKey(60, M1, "t", "/s")] == 2
    assert counts[RollupKey(3600, H1, "t", "/s")] == 2


@pytest.mark.parametrize(
    ("rows", "events"),
    [
        ([], 0),
        ([("t", "/s", T1, RECEIVED)], 1),
        ([("t", "/s", T1, RECEIVED), ("t", "/s", T1_LATER_SAME_MINUTE, RECEIVED)], 2),
        ([("t", "/s", T1, RECEIVED), ("u", "/r", T3_NEXT_HOUR, RECEIVED), ("t", "/s", None, RECEIVED)], 3),
    ],
    ids=["nothing", "one", "one-bucket", "buckets-apart"],
)
def test_events_counted(rows, events):
    """Counts hold each event once per bucket size: the number of events is one size's sum."""
    counts = count_events(rows)
    assert sum(counts.values()) == events * len(BUCKET_SECONDS)
    assert events_counted(counts) == events


def test_rollup_rows_are_keyed_sorted_and_skip_zeros():
    """Rows carry the series key, come in primary-key order, and zero counts are left out."""
    counts = Counter(
        {
            RollupKey(3600, H1, "t", "/s"): 2,
            RollupKey(60, M2, "t", "/s"): 1,
            RollupKey(60, M1, "u", "/s"): 4,
            RollupKey(60, M1, "t", "/s"): 0,
        }
    )
    rows = rollup_rows(counts)
    assert [(r["bucket_seconds"], r["bucket_start"], r["count"]) for r in rows] == [
        (60, M1, 4),
        (60, M2, 1),
        (3600, H1, 2),
    ]
    assert rows[0] == {
        "bucket_seconds": 60,
        "bucket_start": M1,
        "series": series("u", "/s"),
        "type": "u",
        "source": "/s",
        "count": 4,
    }


def test_rollup_rows_order_by_series_within_a_bucket():
    """Within one bucket the rows are ordered by series key, the last part of the primary key."""
    counts = Counter({RollupKey(60, M1, f"type-{n}", "/s"): 1 for n in range(20)})
    keys = [row["series"] for row in rollup_rows(counts)]
    assert keys == sorted(keys)


@pytest.mark.parametrize(
    ("configured", "job_timeout", "expected"),
    [(None, 60.0, 130.0), (None, 5.0, 20.0), (0.0, 60.0, 0.0), (3.5, 60.0, 3.5)],
)
def test_settle_seconds(configured, job_timeout, expected):
    """Unset, the settle time is twice the job time limit plus ten seconds; a setting wins, zero included."""
    assert settle_seconds(configured, job_timeout) == expected


A, B, C = RollupKey(60, M1, "t", "/s"), RollupKey(60, M2, "t", "/s"), RollupKey(3600, H1, "t", "/s")


@pytest.mark.parametrize(
    ("expected", "actual", "found"),
    [
        ({}, {}, []),
        ({A: 1, C: 2}, {C: 2, A: 1}, []),
        ({A: 2}, {A: 1}, [Difference(A, 2, 1)]),  # undercounted
        ({A: 1}, {}, [Difference(A, 1, 0)]),  # missing bucket
        ({}, {B: 3}, [Difference(B, 0, 3)]),  # bucket with no events
        ({A: 1, B: 0}, {A: 1}, []),  # a zero is the same as no row
        ({C: 1, A: 1}, {C: 2, B: 1}, [Difference(A, 1, 0), Difference(B, 0, 1), Difference(C, 1, 2)]),
    ],
)
def test_differences(expected, actual, found):
    """Every bucket where the table and the events disagree, in key order."""
    assert differences(expected, actual) == found


def test_difference_reads_as_a_sentence():
    """A difference names the bucket, the series and both counts."""
    text = str(Difference(RollupKey(3600, H1, "com.example.a", "/shop"), 3, 2))
    assert text == (
        "hour 2026-01-02T03:00:00+00:00 type='com.example.a' source='/shop': events say 3, rollups say 2"
    )


def test_bucket_start_keeps_utc_whatever_the_input_zone():
    """The start comes back in UTC even when the event's time had another offset."""
    start = bucket_start(datetime(2026, 1, 2, 10, 15, tzinfo=timezone(timedelta(hours=5, minutes=30))), 60)
    assert start.tzinfo == UTC
