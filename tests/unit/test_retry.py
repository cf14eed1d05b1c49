"""Retry decisions: a pure function of (exception, try) to retry-later or give-up, tested as tables."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from worker.errors import (
    CheckpointMoved,
    DatabaseUnavailable,
    InvalidArgument,
    JobFailed,
    PermanentError,
    RetryableError,
)
from worker.runtime.retry import GiveUp, RetryLater, classify, decide


def always(value: float):
    """A fixed stand-in for random.random."""
    return lambda: value


def operational_error() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused"))


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (PermanentError(), "permanent"),
        (InvalidArgument("window", "1x", "not a duration"), "permanent"),
        (JobFailed(7, "boom"), "permanent"),
        (TimeoutError(), "timeout"),
        (operational_error(), "database_unavailable"),
        (sa_exc.InterfaceError("SELECT 1", {}, Exception("closed")), "database_unavailable"),
        (sa_exc.TimeoutError("QueuePool limit reached"), "database_unavailable"),
        (sa_exc.DisconnectionError("gone"), "database_unavailable"),
        (ConnectionRefusedError(111, "Connection refused"), "database_unavailable"),
        (ConnectionResetError(), "database_unavailable"),
        (DatabaseUnavailable(), "database_unavailable"),
        (CheckpointMoved("rollups", 7), "retryable"),
        (RetryableError("try later"), "retryable"),
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
        (InvalidArgument("limit", 0, "must be 1 or more"), 3, 5, GiveUp("permanent")),
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
        (CheckpointMoved("rollups", 7), 2, 5, RetryLater(2.0, "retryable")),
        (CheckpointMoved("rollups", 7), 5, 5, GiveUp("retryable, last of 5 tries")),
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
