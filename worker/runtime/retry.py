"""What to do when a job fails: a pure function of (exception, try) to a decision.

Every failure is retried with exponential back-off and jitter (arq has none), except
permanent ones and those on the last try, which are recorded as failed jobs. A try that
failed only because the database could not be reached is not the job's fault and has no
last try: the job waits for the database, however long the outage
(:func:`worker.runtime.jobrunner.job` gives that try back to arq).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from worker.backoff import backoff
from worker.db.failures import is_connection_error
from worker.errors import DatabaseUnavailable, PermanentError, RetryableError

#: The kind of failure that does not use up a try.
DATABASE_UNAVAILABLE = "database_unavailable"
#: The kind of failure given up on at once.
PERMANENT = "permanent"
#: The kind of an eventworker error that says another try may succeed (``RetryableError``).
RETRYABLE = "retryable"


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Run the job again after ``delay`` seconds."""

    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop trying; record the job as failed."""

    reason: str


Decision = RetryLater | GiveUp


def classify(exc: BaseException) -> str:
    """A short name for the kind of failure, for logs and decisions.

    The error tree of :mod:`worker.errors` is read first: a ``PermanentError`` is permanent, a
    ``DatabaseUnavailable`` is :data:`DATABASE_UNAVAILABLE` and any other ``RetryableError`` is
    :data:`RETRYABLE`. Then what comes from outside eventworker: time limits, and the drivers'
    connection errors.
    """
    if isinstance(exc, PermanentError):
        return PERMANENT
    if isinstance(exc, DatabaseUnavailable):
        return DATABASE_UNAVAILABLE
    if isinstance(exc, RetryableError):
        return RETRYABLE
    if isinstance(exc, TimeoutError):  # the job's own time limit, or a connect timeout
        return "timeout"
    if is_connection_error(exc):
        return DATABASE_UNAVAILABLE
    return "unexpected"


def decide(
    exc: BaseException,
    job_try: int,
    max_tries: int,
    *,
    base: float,
    cap: float,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Retry with back-off, or give up on permanent failures and on the last try.

    ``database_unavailable`` is always retried: recording the failure needs the database too,
    and the job itself did nothing wrong. For it ``job_try`` counts the waits so far, for the back-off.
    """
    kind = classify(exc)
    if kind == PERMANENT:
        return GiveUp(kind)
    if job_try >= max_tries and kind != DATABASE_UNAVAILABLE:
        return GiveUp(f"{kind}, last of {max_tries} tries")
    return RetryLater(backoff(job_try, base, cap, rand), kind)
