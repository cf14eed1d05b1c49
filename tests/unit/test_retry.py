"""Retry decisions: a pure function of (exception, try) to retry-later or give-up, tested as tables."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from worker.errors import DatabaseUnavailable, InvalidEvent, JobFailed, PermanentError, UndecodableJob
from worker.runtime.retry import GiveUp, RetryLater, backoff, classify, decide


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


def operational_error() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused"))


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (PermanentError(), "permanent"),
        (InvalidEvent([{"loc": ("id",), "msg": "Field required"}]), "permanent"),
        (UndecodableJob(), "permanent"),
        (JobFailed(7, "boom"), "permanent"),
        (TimeoutError(), "timeout"),
        (operational_error(), "database_unavailable"),
        (sa_exc.InterfaceError("SELECT 1", {}, Exception("closed")), "database_unavailable"),
        (sa_exc.TimeoutError("QueuePool limit reached"), "database_unavailable"),
        (sa_exc.DisconnectionError("gone"), "database_unavailable"),
        (ConnectionRefusedError(111, "Connection refused"), "database_unavailable"),
        (ConnectionResetError(), "database_unavailable"),
        (DatabaseUnavailable(), "database_unavailable"),
        (ValueError("bad"), "unexpected"),
        (KeyError("k"), "unexpected"),
        (sa_exc.IntegrityError("INSERT", {}, Exception("NOT NULL constraint failed")), "unexpected"),
        (sa_exc.ProgrammingError("SELEC", {}, Exception("syntax error")), "unexpected"),
    ],
)
def test_classify(exc, kind):
    """Each failure gets a short kind name for logs and decisions."""
    assert classify(exc) == kind


@pytest.mark.parametrize(
    ("exc", "job_try", "max_tries", "expected"),
    [
        (PermanentError("nope"), 1, 5, GiveUp("permanent")),
        (InvalidEvent([]), 3, 5, GiveUp("permanent")),
        (RuntimeError("boom"), 5, 5, GiveUp("unexpected, last of 5 tries")),
        (RuntimeError("boom"), 6, 5, GiveUp("unexpected, last of 5 tries")),
        (operational_error(), 1, 1, RetryLater(1.0, "database_unavailable")),  # no last try
        (ConnectionRefusedError(), 7, 5, RetryLater(60.0, "database_unavailable")),
        (TimeoutError(), 3, 3, GiveUp("timeout, last of 3 tries")),
        (RuntimeError("boom"), 1, 5, RetryLater(1.0, "unexpected")),
        (RuntimeError("boom"), 4, 5, RetryLater(8.0, "unexpected")),
        (operational_error(), 1, 5, RetryLater(1.0, "database_unavailable")),
        (operational_error(), 2, 5, RetryLater(2.0, "database_unavailable")),
        (ConnectionRefusedError(), 3, 5, RetryLater(4.0, "database_unavailable")),
        (DatabaseUnavailable(), 1, 5, RetryLater(1.0, "database_unavailable")),
        (TimeoutError(), 1, 5, RetryLater(1.0, "timeout")),
        (ValueError("bad"), 2, 5, RetryLater(2.0, "unexpected")),
    ],
)
def test_decide(exc, job_try, max_tries, expected):
    """Permanent failures and last tries give up; everything else is retried with back-off.

    An unreachable database has no last try: the job waits for it.
    """
    assert decide(exc, job_try, max_tries, base=1.0, cap=60.0, rand=always(1.0)) == expected


def test_decide_caps_the_retry_delay():
    """decide passes the cap through to the back-off."""
    decision = decide(RuntimeError(), 9, 20, base=1.0, cap=5.0, rand=always(0.0))
    assert decision == RetryLater(2.5, "unexpected")
