"""The back-off formula shared by job retries, producer enqueue tries and handler runs, tested as a table."""

from __future__ import annotations

import pytest

from worker.backoff import backoff


def always(value: float):
    """A fixed stand-in for random.random."""
    return lambda: value


@pytest.mark.parametrize(
    ("job_try", "base", "cap", "rand", "expected"),
    [
        # Equal jitter: half the delay fixed, half random (rand 0 -> half, rand 1 -> whole).
        (1, 1.0, 60.0, 0.0, 0.5),
        (1, 1.0, 60.0, 1.0, 1.0),
        (1, 1.0, 60.0, 0.5, 0.75),
        (2, 1.0, 60.0, 0.0, 1.0),
        (2, 1.0, 60.0, 1.0, 2.0),
        (3, 1.0, 60.0, 1.0, 4.0),
        (6, 1.0, 60.0, 1.0, 32.0),
        # Capped: 2**6 = 64 > 60.
        (7, 1.0, 60.0, 0.0, 30.0),
        (7, 1.0, 60.0, 1.0, 60.0),
        (60, 1.0, 60.0, 1.0, 60.0),
        (4, 2.5, 10.0, 1.0, 10.0),
        (2, 0.25, 10.0, 1.0, 0.5),
        # A try number below 1 is treated as the first.
        (0, 1.0, 60.0, 1.0, 1.0),
    ],
)
def test_backoff(job_try, base, cap, rand, expected):
    """Delay is base * 2**(try-1), capped, with half of it random."""
    assert backoff(job_try, base, cap, always(rand)) == pytest.approx(expected)


def test_backoff_is_capped_for_any_try():
    """However many tries, the delay never exceeds the cap (and never raises)."""
    assert backoff(1100, 1.0, 60.0, always(1.0)) == 60.0


def test_backoff_uses_random_by_default():
    """Without rand, delays stay within [delay/2, delay]."""
    delays = {backoff(3, 1.0, 60.0) for _ in range(50)}
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(delays) > 1
