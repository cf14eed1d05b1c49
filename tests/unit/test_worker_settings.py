"""The worker definition: jobs, cron jobs and their names agree with the job deserializer."""

from __future__ import annotations

import orjson

from worker.main import worker_settings


def test_every_cron_job_is_a_job_the_deserializer_accepts(settings):
    """A cron tick's job record names a function the worker's deserializer lets through."""
    options = worker_settings(settings)
    names = {job.name for job in options["cron_jobs"]}
    assert "update_rollups" in names
    for name in names:
        raw = orjson.dumps({"t": 1, "f": name, "a": [], "k": {}, "et": 1})
        assert options["job_deserializer"](raw)["f"] == name


def test_cron_ticks_are_unique_across_workers(settings):
    """Cron jobs are unique, so arq gives each tick one job id and it runs once however many workers."""
    assert all(job.unique for job in worker_settings(settings)["cron_jobs"])


def test_arq_tries_leave_room_to_record_a_failure(settings):
    """arq's try limit is above ours, so the try after the last one records the failure."""
    assert worker_settings(settings)["max_tries"] > settings.max_tries
    assert worker_settings(settings)["job_timeout"] > settings.job_timeout
