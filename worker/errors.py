"""The exceptions eventworker raises, as one small tree.

::

    EventWorkerError                 base: ``str(exc)`` is always a message a person can act on
    ├── ConfigError                  a setting is invalid (names the setting)
    ├── SchemaBehindError            the database is not migrated to this version (names the command)
    ├── EnqueueError                 a producer could not enqueue after its tries (names the job id)
    ├── RetryableError               trying again later may succeed: retried, and recorded after the last try
    │   ├── DatabaseUnavailable      the database cannot be reached: retried without using up a try
    │   └── CheckpointMoved          another run moved a checkpoint first (names the checkpoint)
    └── PermanentError               trying again will not help: recorded in failed_jobs at once
        ├── InvalidArgument          a job or command was given an unusable argument (names it)
        └── JobFailed                a job used its last try (recorded in failed_jobs)

Jobs never let a driver exception escape unclassified: ``worker.runtime.retry.classify`` reads
this tree first (and the driver's connection errors, which count as ``DatabaseUnavailable``),
so any exception ends as "retry with back-off" or "record as failed".
"""

from __future__ import annotations


class EventWorkerError(Exception):
    """Something went wrong in eventworker."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())


class ConfigError(EventWorkerError):
    """A setting is invalid."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class SchemaBehindError(EventWorkerError):
    """The database schema is older than this version of eventworker."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current = current
        self.head = head
        state = "was never migrated" if current is None else f"is at revision {current}"
        super().__init__(
            f"the database schema {state}, this version of eventworker needs revision {head}:"
            " run `eventworker migrate` (or `alembic upgrade head`) first"
        )


class EnqueueError(EventWorkerError):
    """Redis did not confirm a job after every try; enqueueing it again under the same job id is safe."""

    def __init__(
        self, redacted_url: str, job_id: str | None, tries: int, cause: BaseException, enqueued: list[str]
    ) -> None:
        self.url = redacted_url  # the caller hides its password: this module knows no URL format
        self.job_id = job_id
        self.tries = tries
        self.enqueued = enqueued
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        why = f"({type(cause).__name__}: {reason})"
        if job_id is None:
            super().__init__(f"could not connect to Redis at {self.url} {why}")
            return
        before = f"; {len(enqueued)} job(s) of this emit were enqueued before it" if enqueued else ""
        super().__init__(
            f"could not enqueue job {job_id} to Redis at {self.url} after {tries} tries {why}{before}"
        )


class RetryableError(EventWorkerError):
    """A failure that may go away if the job is tried again later."""


class DatabaseUnavailable(RetryableError):
    """The database could not be reached or dropped the connection."""


class CheckpointMoved(RetryableError):
    """Another run moved the checkpoint while this one worked; this run's changes were rolled back."""

    def __init__(self, name: str, expected: int) -> None:
        self.name = name
        self.expected = expected
        super().__init__(
            f"checkpoint {name!r} is no longer at {expected}: another run got there first;"
            " this run's changes were rolled back and the next run continues from the new position"
        )


class PermanentError(EventWorkerError):
    """A failure that another try would repeat."""


class InvalidArgument(PermanentError):
    """A job or command was given an argument it cannot use."""

    def __init__(self, argument: str, value: object, problem: str) -> None:
        self.argument = argument
        self.value = value
        self.problem = problem
        super().__init__(f"{argument}={value!r}: {problem}")


class JobFailed(PermanentError):
    """A job used its last try and was recorded in failed_jobs."""

    def __init__(self, failed_job_id: int, error: str) -> None:
        self.failed_job_id = failed_job_id
        super().__init__(
            f"recorded as failed job {failed_job_id} (`eventworker failed list`, `eventworker failed requeue"
            f" {failed_job_id}`): {error}"
        )
