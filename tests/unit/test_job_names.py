"""Job names live in worker.constants: the worker runs and schedules its jobs by exactly those names."""

from __future__ import annotations

from worker import constants
from worker.main import FUNCTIONS, cron_jobs


def test_the_worker_runs_its_jobs_by_the_names_in_constants():
    """Every job function's name, the name arq runs it by, is a job name of worker.constants."""
    assert [function.__name__ for function in FUNCTIONS] == [
        constants.INGEST_JOB,
        constants.UNDECODABLE_JOB,
        constants.REBUILD_ROLLUPS_JOB,
        constants.EXPORT_EVENTS_JOB,
        constants.RUN_HANDLERS_JOB,
        constants.EVENT_STATS_JOB,
    ]


def test_the_cron_jobs_are_the_ones_in_constants():
    """The cron jobs are constants.CRON_JOBS, in that order, each named as its job function."""
    periodic = cron_jobs()
    assert tuple(job.name for job in periodic) == constants.CRON_JOBS
    assert [job.coroutine.__name__ for job in periodic] == list(constants.CRON_JOBS)
    assert constants.CRON_JOBS == (
        constants.UPDATE_ROLLUPS_JOB,
        constants.APPLY_RETENTION_JOB,
        constants.SWEEP_HANDLERS_JOB,
        constants.MAINTAIN_PARTITIONS_JOB,
    )
